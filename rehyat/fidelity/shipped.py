"""The shipped student as rows of the fidelity table: stage 1 + 2, and the stage-1 φ alone.

Both are loaded with :func:`rehyat.student.load_student` from the student's files (by default next to
the teacher's: ``teacher_phi.safetensors`` and ``student_lora.safetensors``), generate the held-out
clips like every case and are scored alike, with the content measures at both lengths. Their exact
budgets are read from the files' metadata (the φ file's and the LoRA file's ``training`` JSON).
A missing file skips its row with the reason recorded (the report says the files are absent).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from ..models.wan_rehyat import conversion_config
from ..student import LORA_FILE, PHI_FILE, load_student
from ..student.files import file_digest, read_lora
from ..teacher.model import SamplingConfig, Teacher
from ..weights import load_phi_weights
from .scoring import cached, generate_clips, score_clips, store

STUDENT = "shipped_student"
STAGE1 = "shipped_stage1"
ROWS: dict[str, tuple[str, str, tuple[str, ...]]] = {  # name → (load_student stage, label, files needed)
    STUDENT: ("student", "shipped student (stage 1 + 2)", (PHI_FILE, LORA_FILE)),
    STAGE1: ("stage1", "shipped stage-1 φ only", (PHI_FILE,)),
}


def shipped_budgets(folder: Path) -> dict[str, Any]:
    """The ``training`` records of the student's files that exist (the LoRA's loss curves left out)."""
    budgets: dict[str, Any] = {}
    if (folder / PHI_FILE).is_file():
        budgets["phi"] = load_phi_weights(folder / PHI_FILE).training or {}
    if (folder / LORA_FILE).is_file():
        budgets["lora"] = _without_curves(read_lora(folder / LORA_FILE)[1])
    return budgets


CURVES = ("loss_curve", "seam_losses")  # per-step lists of a training record


def _without_curves(value: Any) -> Any:
    """``value`` with every per-step curve (:data:`CURVES`) left out, at any depth."""
    if isinstance(value, dict):
        return {k: _without_curves(v) for k, v in value.items() if k not in CURVES}
    if isinstance(value, list):
        return [_without_curves(v) for v in value]
    return value


def shipped_rows(
    teacher: Teacher,
    teacher_clips: dict[str, list[Tensor]],
    work: Path,
    eval_set: list[tuple[str, int]],
    *,
    folder: Path,
    long_frames: int,
    sampling: SamplingConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``{"folder", "files", "budgets", "rows", "skipped"}`` for the student files in ``folder``."""
    folder = Path(folder)
    out: dict[str, Any] = {
        "folder": str(folder),
        "files": {name: (folder / name).is_file() for name in (PHI_FILE, LORA_FILE)},
        "budgets": shipped_budgets(folder),
        "rows": {},
        "skipped": {},
    }
    long_set = eval_set[: len(teacher_clips["long"])]
    for name, (stage, label, needed) in ROWS.items():
        missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            out["skipped"][name] = f"{' and '.join(missing)} absent from {folder}"
            continue
        definition = {"stage": stage, "files": {f: file_digest(folder / f) for f in needed}}
        path = work / "student" / f"{name}.json"
        record = cached(path, definition)
        if record is None:
            try:
                model = load_student(teacher, folder, stage)
            except ValueError as err:  # e.g. φ made for another teacher
                out["skipped"][name] = f"could not load: {err}"
                continue
            conversion = conversion_config(model.dit)
            tc = conversion.attention.chunk_frames if conversion is not None else 3
            log(f"  {name}: generating {len(eval_set)} + {len(long_set)} clips …")
            short = generate_clips(teacher, model.dit, eval_set, teacher.config.clip.frames, sampling)
            long = generate_clips(teacher, model.dit, long_set, long_frames, sampling)
            record = score_clips(teacher_clips, short, long, eval_set, tc, teacher.config.clip)
            record = store(path, definition, record)
        record["case"] = {"name": name, "group": "student", "label": label, "stage": stage}
        out["rows"][name] = record
    return out
