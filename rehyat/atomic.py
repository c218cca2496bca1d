"""Atomic file writes: a temporary sibling file, fsync, ``os.replace``, fsync of the directory.

A reader never sees a half-written file: an existing file at the target is replaced only once the
new one is complete (keeping its permissions), and on any failure the temporary file is removed and
the target is untouched. A target that is a symlink to a file is written "through" (the link's
target is replaced, the link kept — like ComfyUI's own saves).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import safetensors.torch
from torch import Tensor


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Atomically create or replace ``path`` with what ``write(tmp)`` writes to a temporary sibling.

    Returns the path written (a symlink's target when ``path`` links to a file).
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
        write(tmp)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_save_file(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str], path: str | os.PathLike[str]
) -> Path:
    """Atomically ``safetensors.torch.save_file`` ``tensors`` with ``metadata`` to ``path``."""
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(dict(tensors), tmp, metadata=dict(metadata))
    )


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
