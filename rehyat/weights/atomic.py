"""Atomic safetensors writes (temporary sibling file, fsync, ``os.replace``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import safetensors.torch
from torch import Tensor


def atomic_save_file(
    tensors: dict[str, Tensor], metadata: dict[str, str], path: str | os.PathLike[str]
) -> Path:
    """safetensors-save to a temporary sibling file, fsync it, then ``os.replace`` it to ``path``.

    An existing file at ``path`` is replaced only once the new one is complete (and keeps its
    permissions); on any failure the temporary file is removed and ``path`` is untouched. When
    ``path`` is a symlink to a file, the link's target is replaced and the link kept (writing
    "through" it, like ComfyUI's own saves).
    """
    path = Path(path)
    if path.is_symlink() and path.resolve().is_file():
        path = path.resolve()
    directory = path.parent if str(path.parent) else Path(".")
    try:
        mode = path.stat().st_mode & 0o777  # keep the permissions of a file being replaced
    except FileNotFoundError:
        mode = 0o644  # mkstemp would create 0600
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    """Persist the rename (POSIX; silently skipped where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
