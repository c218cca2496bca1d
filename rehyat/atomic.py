"""Atomic file writes: a temporary sibling file, fsync, ``os.replace``, fsync of the directory.

A reader never sees a half-written file: an existing file at the target is replaced only once the
new one is complete (keeping its permissions), and on any failure the temporary file is removed and
the target is untouched. A target that is a symlink to a file is written "through" (the link's
target is replaced, the link kept — like ComfyUI's own saves).

``replace=False`` publishes a *new* file instead: the complete temporary file gets the target name
only if no file (or link) of that name exists — atomically, with ``os.link`` (or an ``O_EXCL``
reservation where hard links are unavailable) — else ``FileExistsError`` and nothing changes.
:func:`create_numbered` builds on it: the one race-free way to pick a numbered output name
(``<prefix>_00001_.safetensors`` …); concurrent processes never overwrite each other's files.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import safetensors.torch
from torch import Tensor

from .file_names import check_name_length

T = TypeVar("T")


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, replace: bool = True
) -> Path:
    """Atomically create (or, with ``replace``, replace) ``path`` with what ``write(tmp)`` writes.

    ``write`` fills a temporary sibling file; it is fsynced and then published under ``path``.

    Args:
        replace: True: an existing file is replaced once the new one is complete (a symlink to a
            file is written through). False: ``path`` must not exist (not even as a dangling link);
            the name is taken atomically, so of two concurrent writers exactly one succeeds.

    Returns:
        The path written (a symlink's target when ``path`` links to a file and ``replace``).

    Raises:
        FileExistsError: ``replace`` is False and ``path`` exists (nothing written).
    """
    path = Path(path)
    if not replace and os.path.lexists(path):
        raise _exists(path)
    if replace and path.is_symlink() and path.resolve().is_file():
        path = path.resolve()
    directory = path.parent if str(path.parent) else Path(".")
    try:
        mode = path.stat().st_mode & 0o777 if replace else 0o644  # keep a replaced file's permissions
    except FileNotFoundError:
        mode = 0o644  # mkstemp would create 0600
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, replace: bool = True) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), replace=replace)


def atomic_save_file(
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    path: str | os.PathLike[str],
    *,
    replace: bool = True,
) -> Path:
    """Atomically ``safetensors.torch.save_file`` ``tensors`` with ``metadata`` to ``path``.

    ``replace=False``: a new file only (``FileExistsError`` if ``path`` exists), see :func:`atomic_write`.
    """
    return atomic_write(
        path,
        lambda tmp: safetensors.torch.save_file(dict(tensors), tmp, metadata=dict(metadata)),
        replace=replace,
    )


def create_numbered(
    candidate: Callable[[int], Path],
    create: Callable[[Path], T],
    *,
    first: int = 1,
    taken: Callable[[int], bool] | None = None,
    attempts: int = 100_000,
) -> T:
    """``create(candidate(n))`` for the first free number ``n ≥ first`` — race-free numbered outputs.

    Names that exist already (or for which ``taken(n)`` is True, e.g. a sibling file of the same
    number) are skipped. ``create`` must publish *without replacing* (``atomic_write(...,
    replace=False)`` and the functions built on it) and so raise ``FileExistsError`` when another
    process took the name in between; the next number is then tried. Two processes saving with the
    same prefix at the same time therefore each get their own file, and no file is overwritten.

    Returns:
        What ``create`` returned for the name it published.
    """
    number = first
    for _ in range(attempts):
        path = candidate(number)
        if os.path.lexists(path) or (taken is not None and taken(number)):
            number += 1
            continue
        try:
            return create(path)
        except FileExistsError:
            if not os.path.lexists(path):  # not a lost race for this name: a real error
                raise
            number += 1
    raise FileExistsError(
        errno.EEXIST, f"no free numbered name after {attempts} tries (last: {path})", str(path)
    )


def create_file_group(
    stem: str, outputs: Sequence[tuple[str | os.PathLike[str], str, Callable[[Path], T]]]
) -> list[T]:
    """New files ``<folder>/<stem'><suffix>`` sharing the first free stem ``stem'``: ``stem``, ``stem_01`` …

    ``outputs`` lists ``(folder, suffix, create)`` (folders created); each ``create`` must publish
    without replacing, as in :func:`create_numbered`. The first file claims the stem race-free (a
    stem counts as taken when any of its files exists); the others then take the same stem.

    Returns:
        What each ``create`` returned, in order.
    """
    if not outputs:
        return []
    folders = [Path(folder) for folder, _, _ in outputs]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    def name(number: int, index: int) -> Path:
        return folders[index] / f"{stem if number == 0 else f'{stem}_{number:02d}'}{outputs[index][1]}"

    numbers: dict[Path, int] = {}

    def first_name(number: int) -> Path:
        path = name(number, 0)
        numbers[path] = number
        return path

    def create_all(path: Path) -> list[T]:
        results = [outputs[0][2](path)]  # claims the stem (FileExistsError: lost the race, next stem)
        for index, (_, _, create) in enumerate(outputs[1:], start=1):
            try:
                results.append(create(name(numbers[path], index)))
            except FileExistsError as err:  # written meanwhile by something not using this helper
                raise RuntimeError(f"{err}; {path} was saved already") from None
        return results

    return create_numbered(
        first_name,
        create_all,
        first=0,
        taken=lambda n: any(os.path.lexists(name(n, i)) for i in range(1, len(outputs))),
    )


def check_new_file(path: str | os.PathLike[str], parameter: str) -> Path:
    """``path`` if a new file can be created there; else a one-line ValueError naming ``parameter``.

    Refused: a name that exists (a file, a folder, or a link — even a dangling one: an input is never
    written over), a name or folder name over 255 bytes, a path under a file, and a folder that is
    not writable. Folders that do not exist yet are fine (the writer creates them).
    """
    path = Path(path)
    check_name_length(path, parameter)
    if os.path.lexists(path):
        kind = "a folder" if path.is_dir() else "a link" if path.is_symlink() else "a file"
        raise ValueError(
            f"{parameter} {path} already exists ({kind}): it is never overwritten — choose a new file name"
        )
    folder = path.parent if str(path.parent) else Path(".")
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{parameter} {path}: {folder} is a file, not a folder — choose another place")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{parameter} {path}: the folder {folder} is not writable — choose another place")
    return path


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(
        errno.EEXIST, f"{path} already exists: it is never overwritten (choose another name)", str(path)
    )


def _publish_new(tmp: Path, path: Path) -> None:
    """Give the complete file ``tmp`` the new name ``path`` (``FileExistsError`` if taken); ``tmp`` goes."""
    try:
        os.link(tmp, path)  # atomic; fails if any file or link named ``path`` exists
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:  # no hard links here (some network / FAT file systems): reserve, then fill
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise _exists(path) from None
        try:
            os.replace(tmp, path)  # replaces only the empty placeholder this call created
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return
    tmp.unlink()


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
