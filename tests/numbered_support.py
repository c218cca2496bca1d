"""Workers for the concurrent numbered-output tests (run in spawned processes; importable by name).

Each worker waits at a shared barrier so both processes save at the same time, saves ``count``
files with the same prefix and returns ``[(name, value), …]``: the file it was told it saved and
the value it wrote into it, so the parent can check that every save landed as its own file.
"""

from __future__ import annotations

import traceback
from pathlib import Path


def report_to(queue, worker, *args) -> None:
    """Run ``worker(*args)`` and put ``(True, result)`` or ``(False, traceback)`` on ``queue``."""
    try:
        queue.put((True, worker(*args)))
    except BaseException:
        queue.put((False, traceback.format_exc()))


def library_saves(folder: str, tag: int, count: int, barrier) -> list[tuple[str, float]]:
    """``create_numbered`` + ``atomic_save_file(replace=False)``, ComfyUI-style names."""
    import torch

    from rehyat.atomic import atomic_save_file, create_numbered

    barrier.wait()
    out = []
    for i in range(count):
        value = float(tag * 1000 + i)
        path = create_numbered(
            lambda n: Path(folder) / f"race_{n:05}_.safetensors",
            lambda p, v=value: atomic_save_file({"v": torch.full((64,), v)}, {}, p, replace=False),
        )
        out.append((path.name, value))
    return out


def node_saves(cond_folder: str, tag: int, count: int, barrier) -> list[tuple[str, float]]:
    """The pack's Save Conditioning node in real ComfyUI, ``filename_prefix`` ``race/prompt``."""
    import torch
    from nodes_support import import_pack, run_node

    import_pack()
    import folder_paths

    folder_paths.folder_names_and_paths["rehyat_conditioning"] = ([cond_folder], {".safetensors"})
    barrier.wait()
    out = []
    for i in range(count):
        value = float(tag * 1000 + i)
        (name,) = run_node(
            "ReHyAtSaveConditioning",
            conditioning=[[torch.full((1, 2, 4), value), {}]],
            filename_prefix="race/prompt",
        )
        out.append((name, value))
    return out


def file_groups(folders: list[str], tag: int, count: int, barrier) -> list[tuple[list[str], float]]:
    """``create_file_group``: a fine-tune's LoRA + φ files sharing one stem, ``count`` times."""
    import torch

    from rehyat.atomic import create_file_group

    barrier.wait()
    out = []
    for i in range(count):
        value = float(tag * 1000 + i)
        tensor = {"v": torch.full((8,), value)}
        paths = create_file_group(
            "race_s10",
            [
                (Path(folders[0]), "_lora.safetensors", lambda p, t=tensor: _save(t, p)),
                (Path(folders[1]), "_phi.safetensors", lambda p, t=tensor: _save(t, p)),
            ],
        )
        out.append(([str(p) for p in paths], value))
    return out


def _save(tensors, path):
    from rehyat.atomic import atomic_save_file

    return atomic_save_file(tensors, {}, path, replace=False)
