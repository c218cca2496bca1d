"""The shipped student's files: stage-1 φ and the stage-2 LoRA, next to the teacher's files.

- ``teacher_phi.safetensors``: φ of every block after stage 1 (a φ file, fp16; the pack's
  ``ReHyAt`` nodes load it like any φ file).
- ``student_lora.safetensors``: the stage-2 adapters in ComfyUI's LoRA format (stock
  ``LoraLoaderModelOnly`` applies it to the teacher's Wan checkpoint), with the recipe and
  measurements in its metadata.

The student is the teacher converted with the φ, with the LoRA folded into its weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..atomic import atomic_save_file
from ..finite import require_finite
from ..models.wan_rehyat import load_phi, save_phi
from ..teacher.model import ASSETS, Teacher
from ..training.lora import apply_comfy_lora, comfy_lora_state_dict, merge_lora

PHI_FILE = "teacher_phi.safetensors"
LORA_FILE = "student_lora.safetensors"
STAGES = ("student", "stage1")
LORA_FORMAT = "rehyat-student-lora"


def student_files_present(folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``folder`` (default: the shipped assets) holds both student files."""
    folder = Path(folder) if folder else ASSETS
    return (folder / PHI_FILE).is_file() and (folder / LORA_FILE).is_file()


def load_student(
    teacher: Teacher, folder: str | os.PathLike[str] | None = None, stage: str = "student"
) -> Teacher:
    """A new :class:`Teacher` converted to ReHyAt from the files in ``folder`` (default: the assets).

    Args:
        teacher: the softmax teacher (unchanged; the student is a deep copy).
        folder: where the files are.
        stage: "student" (stage-1 φ + stage-2 LoRA folded into the weights) or "stage1" (φ only).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    folder = Path(folder) if folder else ASSETS
    needed = [PHI_FILE] + ([LORA_FILE] if stage == "student" else [])
    for name in needed:
        if not (folder / name).is_file():
            raise ValueError(
                f"no {name} in {folder}: the student's files are missing — run "
                "python -m rehyat train-student --export DIR (or pass the folder that holds them)"
            )
    student = copy.deepcopy(teacher)
    load_phi(student.dit, folder / PHI_FILE)
    if stage == "student":
        tensors, _ = read_lora(folder / LORA_FILE)
        apply_comfy_lora(student.dit, tensors)
    return student.eval().requires_grad_(False)


def read_lora(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The LoRA tensors (fp32) and the training record of a student LoRA file; NaN/inf is refused."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    require_finite(tensors, f"LoRA file {path}")
    record = json.loads(metadata.get("training", "{}"))
    return tensors, record


def save_student(
    result_stage1: Teacher,
    student: Teacher,
    folder: str | os.PathLike[str],
    report: dict[str, Any],
    *,
    replace: bool = True,
) -> list[Path]:
    """Write the stage-1 φ (fp16) and the student's LoRA (fp16) into ``folder`` (atomically).

    ``student`` must still carry its LoRA adapters (not merged). Returns the two paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phi = save_phi(
        result_stage1.dit,
        folder / PHI_FILE,
        training={"stage": "distill", **{k: v for k, v in report.items() if k != "stage2"}},
        replace=replace,
        dtype=torch.float16,
    )
    tensors = comfy_lora_state_dict(student.dit, dtype=torch.float16)
    metadata = {"format": LORA_FORMAT, "training": json.dumps(report, sort_keys=True)}
    lora = atomic_save_file(tensors, metadata, folder / LORA_FILE, replace=replace)
    return [Path(phi), Path(lora)]


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (what a stored result or a continuation depends on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def merged(student: Teacher) -> Teacher:
    """``student`` with its LoRA adapters folded into the weights (in place; returns it)."""
    merge_lora(student.dit)
    return student
