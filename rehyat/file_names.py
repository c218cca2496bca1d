"""File names from user input (node widgets, CLI arguments): check them, and resolve them inside a
models folder without escaping it. Used by the atomic writers, the Hub download and the nodes' folders."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

MAX_NAME_BYTES = 255
"""The longest file or folder name (one path component) common file systems accept, in bytes."""


def check_name_length(name: str | os.PathLike[str], what: str) -> str:
    """``name`` if none of its components (``/`` or ``\\`` separated) is longer than 255 bytes.

    Raises:
        ValueError: naming ``what``, the too-long component and its length (instead of the
            operating system's ENAMETOOLONG traceback at write time).
    """
    text = os.fspath(name)
    for part in PureWindowsPath(text).parts:
        size = len(os.fsencode(part))
        if size > MAX_NAME_BYTES:
            raise ValueError(
                f"{what}: the name {part[:40]!r}… is {size} bytes long; file and folder names are "
                f"limited to {MAX_NAME_BYTES} bytes — choose a shorter one"
            )
    return str(name)


def check_relative_name(name: str, what: str = "φ file name") -> str:
    """``name`` if it is a non-empty relative path without ``..`` or NUL (``/`` or ``\\`` separators).

    Raises:
        ValueError: naming ``what`` and the problem.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string; got {name!r}")
    if "\x00" in name:
        raise ValueError(f"{what} {name!r} contains a NUL character")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise ValueError(f"{what} {name!r} must be relative to its folder, not absolute")
    if ".." in PureWindowsPath(name).parts or ".." in PurePosixPath(name).parts:
        raise ValueError(f"{what} {name!r} must not contain '..'")
    check_name_length(name, what)
    return name


def resolve_in_folder(folder: str | os.PathLike[str], name: str, *, must_exist: bool = True) -> Path:
    """The path of the ``.safetensors`` file ``name`` inside ``folder``; the name never escapes it.

    ``name`` comes from a node input: it may contain sub-folders (``/`` or ``\\``) but must be
    relative and contain no ``..`` component, so it always names a path inside ``folder``.
    Symlinked sub-folders and files inside ``folder`` are followed, exactly as ComfyUI does for its
    own model folders (a link is something the owner of the folder made, e.g. to models on another
    disk; the node input cannot create one). The returned path is ``folder / name``, not resolved.

    Raises:
        ValueError: for an empty / absolute / ``..`` name, a non-``.safetensors`` name, or a name
            that is a directory.
        FileNotFoundError: if ``must_exist`` and the file does not exist.
    """
    check_relative_name(name)
    if not name.lower().endswith(".safetensors"):
        raise ValueError(f"φ file name {name!r} must end in .safetensors (only safetensors files are read)")
    target = Path(os.path.abspath(folder)) / Path(*PureWindowsPath(name).parts)
    if target.is_dir():
        raise ValueError(f"φ file name {name!r} is a directory")
    if must_exist and not target.is_file():
        raise FileNotFoundError(f"no φ file {name!r} in {os.path.abspath(folder)}")
    return target
