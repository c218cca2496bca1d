"""rehyat.atomic: atomic byte and safetensors writes (replace only when complete, clean up on failure)."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch

from rehyat.atomic import atomic_save_file, atomic_write, atomic_write_bytes


def test_atomic_write_bytes_creates_and_replaces_keeping_permissions(tmp_path):
    target = tmp_path / "report.json"
    assert atomic_write_bytes(target, b"one") == target
    assert target.read_bytes() == b"one"
    assert target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_atomic_save_file_round_trips_tensors_and_metadata(tmp_path):
    path = atomic_save_file({"w": torch.arange(3.0)}, {"format": "x"}, tmp_path / "w.safetensors")
    assert torch.equal(safetensors.torch.load_file(path)["w"], torch.arange(3.0))
    with safetensors.safe_open(path, "pt") as handle:
        assert handle.metadata() == {"format": "x"}


def test_weights_package_still_exports_the_same_function():
    from rehyat.weights import atomic_save_file as from_weights

    assert from_weights is atomic_save_file
