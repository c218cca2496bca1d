"""Numbered outputs are race-free: concurrent processes saving with one prefix each get their own file.

Real processes (multiprocessing, spawn) start saving at the same moment through a barrier; every
save must land as its own file holding what that save wrote — none overwritten, none lost.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numbered_support
import pytest
import safetensors.torch
import torch
from comfy_support import requires_comfyui

from rehyat.atomic import atomic_save_file, atomic_write_bytes, create_file_group, create_numbered

PROCESSES, SAVES = 2, 40


def run_concurrently(worker, first_arg) -> list:
    """``worker(first_arg, tag, SAVES, barrier)`` in PROCESSES spawned processes; their results, joined."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [
        context.Process(
            target=numbered_support.report_to, args=(results, worker, first_arg, tag, SAVES, barrier)
        )
        for tag in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"a saving process exited with {process.exitcode}"
    errors = [outcome for ok, outcome in outcomes if not ok]
    assert not errors, errors[0]
    return [item for _, outcome in outcomes for item in outcome]


def check_every_save_landed(folder: Path, results: list[tuple[str, float]], key: str) -> None:
    names = [name for name, _ in results]
    assert len(set(names)) == len(names) == PROCESSES * SAVES, "two saves reported the same file"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == PROCESSES * SAVES, f"{len(files)} files for {len(names)} saves (or leftovers)"
    for name, value in results:
        stored = safetensors.torch.load_file(folder / name)[key]
        assert torch.all(stored == value), f"{name} holds another save's data"


def test_concurrent_library_saves_each_land_as_their_own_file(tmp_path):
    results = run_concurrently(numbered_support.library_saves, str(tmp_path))
    check_every_save_landed(tmp_path, results, "v")


@requires_comfyui
def test_concurrent_save_conditioning_nodes_never_overwrite_each_other(tmp_path):
    results = run_concurrently(numbered_support.node_saves, str(tmp_path))
    check_every_save_landed(tmp_path / "race", [(Path(n).name, v) for n, v in results], "t0")


def test_concurrent_file_groups_each_get_their_own_stem(tmp_path):
    folders = [str(tmp_path / "loras"), str(tmp_path / "rehyat")]
    results = run_concurrently(numbered_support.file_groups, folders)
    stems = [Path(paths[0]).name.removesuffix("_lora.safetensors") for paths, _ in results]
    assert len(set(stems)) == PROCESSES * SAVES
    for paths, value in results:
        lora, phi = map(Path, paths)
        assert phi.name == lora.name.replace("_lora.", "_phi.")  # one stem per group
        for path in (lora, phi):
            assert torch.all(safetensors.torch.load_file(path)["v"] == value)
    for folder in folders:
        assert len(os.listdir(folder)) == PROCESSES * SAVES


def test_create_without_replace_refuses_existing_names_and_dangling_links(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="never overwritten"):
        atomic_write_bytes(target, b"theirs", replace=False)
    assert target.read_bytes() == b"mine"
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "nowhere.bin")
    with pytest.raises(FileExistsError):
        atomic_save_file({"x": torch.zeros(1)}, {}, link, replace=False)
    assert not (tmp_path / "nowhere.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.bin", "out.bin"]  # no temporary left


def test_create_numbered_skips_taken_names_and_reraises_other_errors(tmp_path):
    (tmp_path / "p_00001_.bin").write_bytes(b"old")
    (tmp_path / "q_00002_.bin").write_bytes(b"sibling")
    path = create_numbered(
        lambda n: tmp_path / f"p_{n:05}_.bin",
        lambda p: atomic_write_bytes(p, b"new", replace=False),
        taken=lambda n: (tmp_path / f"q_{n:05}_.bin").exists(),
    )
    assert path.name == "p_00003_.bin" and (tmp_path / "p_00001_.bin").read_bytes() == b"old"

    def unrelated(path):
        raise FileExistsError("some other file")

    with pytest.raises(FileExistsError, match="some other file"):
        create_numbered(lambda n: tmp_path / f"r_{n}.bin", unrelated)


def test_file_group_takes_the_first_stem_free_in_every_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run_s5_phi.bin").write_bytes(b"old")
    paths = create_file_group(
        "run_s5",
        [
            (tmp_path / "a", "_lora.bin", lambda p: atomic_write_bytes(p, b"l", replace=False)),
            (tmp_path / "b", "_phi.bin", lambda p: atomic_write_bytes(p, b"p", replace=False)),
        ],
    )
    assert [p.name for p in paths] == ["run_s5_01_lora.bin", "run_s5_01_phi.bin"]
    assert (tmp_path / "b" / "run_s5_phi.bin").read_bytes() == b"old"


def test_dataset_append_never_overwrites_a_sample_left_by_an_interrupted_append(tmp_path):
    from rehyat.training.dataset import LatentDataset

    dataset = LatentDataset(tmp_path / "data", model={"name": "tiny", "in_dim": 2})
    dataset.append(torch.zeros(2, 1, 2, 2), torch.zeros(3, 4), {"source": "test"})
    stale = tmp_path / "data" / "sample-000001.safetensors"  # written, but the manifest never was
    stale.write_bytes(b"left by a killed process")
    path = dataset.append(torch.ones(2, 1, 2, 2), torch.ones(3, 4), {"source": "test"})
    assert path.name == "sample-000002.safetensors" and stale.read_bytes() == b"left by a killed process"
    assert len(LatentDataset.open(tmp_path / "data")) == 2
    assert torch.equal(LatentDataset.open(tmp_path / "data").load(1).latent, torch.ones(2, 1, 2, 2))
