"""The ``models/rehyat`` folder where φ weight files live (registered with ComfyUI)."""

from __future__ import annotations

import os

import folder_paths

FOLDER_NAME = "rehyat"
EXTENSIONS = {".safetensors"}


def register_rehyat_folder() -> str:
    """Register ``<ComfyUI>/models/rehyat`` (created if missing); return its path. Idempotent."""
    path = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    os.makedirs(path, exist_ok=True)
    folder_paths.add_model_folder_path(FOLDER_NAME, path, is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER_NAME]
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(EXTENSIONS))
    return path


def phi_file_choices() -> list[str]:
    """φ files available in the registered folders."""
    return folder_paths.get_filename_list(FOLDER_NAME)


def phi_file_path(name: str) -> str:
    """Absolute path of a φ file chosen in a node; the name never escapes the models folder."""
    from ..rehyat.weights import resolve_in_folder

    for folder in folder_paths.get_folder_paths(FOLDER_NAME):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return str(resolve_in_folder(folder, name))
    raise ValueError(f"phi_file {name!r} not found in {folder_paths.get_folder_paths(FOLDER_NAME)}")
