"""The pack's ComfyUI folders: ``models/rehyat`` (φ files) and ``output/rehyat_conditioning``.

Both are registered with ComfyUI's ``folder_paths`` (so ``extra_model_paths.yaml`` can add more
locations under the keys ``rehyat`` / ``rehyat_conditioning``), listed by the load nodes and
written by the save nodes. Names from node inputs never escape their folder; symlinked
sub-folders and files inside it are followed, as ComfyUI does for its own model folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import folder_paths

from ..rehyat.atomic import create_numbered
from ..rehyat.file_names import check_name_length, check_relative_name, resolve_in_folder

FOLDER_NAME = "rehyat"
CONDITIONING_FOLDER = "rehyat_conditioning"
EXTENSIONS = {".safetensors"}


def register_rehyat_folder() -> str:
    """Register ``<ComfyUI>/models/rehyat`` (created if missing) and ``<output>/rehyat_conditioning``.

    The conditioning folder is created by the first save. Idempotent; returns the φ folder's path.
    """
    path = _register(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME), create=True)
    _register(CONDITIONING_FOLDER, os.path.join(folder_paths.get_output_directory(), CONDITIONING_FOLDER),
              create=False)
    return path


def _register(name: str, path: str, *, create: bool) -> str:
    if create:
        os.makedirs(path, exist_ok=True)
    folder_paths.add_model_folder_path(name, path, is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(EXTENSIONS))
    return path


def phi_file_choices() -> list[str]:
    """φ files available in the registered folders."""
    return folder_paths.get_filename_list(FOLDER_NAME)


def conditioning_file_choices() -> list[str]:
    """Conditioning files available in the registered folders."""
    return folder_paths.get_filename_list(CONDITIONING_FOLDER)


def phi_file_path(name: str) -> str:
    """Absolute path of a φ file chosen in a node; the name never escapes the models folder."""
    return str(file_path(FOLDER_NAME, name, "phi_file"))


def file_path(folder_name: str, name: str, parameter: str) -> Path:
    """The file ``name`` in the first registered ``folder_name`` folder that has it.

    Raises:
        ValueError: naming ``parameter`` for a name that would escape the folder or is not found.
    """
    folders = folder_paths.get_folder_paths(folder_name)
    for folder in folders:
        try:
            candidate = resolve_in_folder(folder, name, must_exist=False)
        except ValueError as err:
            raise ValueError(f"{parameter}: {err}") from None
        if candidate.is_file():
            return candidate
    raise ValueError(f"{parameter} {name!r} not found in {folders} (refresh the node's list?)")


def save_numbered(
    folder_name: str,
    filename_prefix: str,
    create: Callable[[Path], object],
    parameter: str = "filename_prefix",
) -> Path:
    """Save a new numbered ``.safetensors`` file for ``filename_prefix`` in the ``folder_name`` folder.

    Numbering follows ComfyUI's save nodes (``<prefix>_00001_.safetensors``); ``create(path)`` writes
    the file and must publish without replacing (``replace=False``), so concurrent saves with the same
    prefix each get their own number and nothing is overwritten (:func:`rehyat.atomic.create_numbered`).
    The prefix may name sub-folders (created) but never leave the folder. Returns the path written.
    """
    check_relative_name(filename_prefix, parameter)
    folder = os.path.abspath(folder_paths.get_folder_paths(folder_name)[0])
    try:
        full_folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, folder)
    except Exception as err:  # ComfyUI raises a bare Exception for an escaping prefix
        raise ValueError(f"{parameter} {filename_prefix!r} is not allowed: {err}") from None
    check_name_length(f"{filename}_{counter:05}_.safetensors", parameter)
    os.makedirs(full_folder, exist_ok=True)

    def create_at(path: Path) -> Path:
        create(path)
        return path

    return create_numbered(
        lambda number: Path(full_folder) / f"{filename}_{number:05}_.safetensors", create_at, first=counter
    )
