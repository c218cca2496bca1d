"""Stage 2b: carry on the on-policy fine-tune of a saved student (``train-student --continue-from``).

A student's files (stage-1 φ + stage-2 LoRA, :func:`rehyat.student.save_student`) record the
recipe that made them. :func:`continue_student` loads them exactly as they are shipped (fp16),
starts the adapters from the LoRA and runs :class:`~rehyat.student.recipe.StudentContinuation`'s
steps of on-policy stage 2 (:func:`rehyat.student.onpolicy.run_stage2_on_trajectories`) on the
generator prompts after the ones the earlier run used, optionally with the boundary-step loss.
The result's record keeps the base record and appends the continuation (settings, the SHA-256 of
the LoRA it started from, losses, seconds), so a chain of continuations stays traceable.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..models.wan_rehyat import set_overlap_frames
from ..teacher.model import Teacher
from ..training.runs import RunFolder, tensors_digest
from .files import LORA_FILE, file_digest, load_student, read_lora
from .onpolicy import run_stage2_on_trajectories
from .recipe import StudentContinuation, StudentRecipe

CONTINUATIONS = "continuations"  # key of the record's list of continuations


def _base_recipe(record: dict[str, Any], path: Path) -> StudentRecipe:
    """The :class:`StudentRecipe` a student LoRA's record names (refused when it names none).

    Records written before ``sampling_overlap_frames`` existed sampled at the To they trained at.
    """
    try:
        return StudentRecipe(**{"sampling_overlap_frames": None, **record["recipe"]})
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path} records no StudentRecipe ({error}); continue from files written by "
            "python -m rehyat train-student"
        ) from None


def next_prompt_index(record: dict[str, Any]) -> int:
    """The first generator prompt a continuation of ``record`` uses (after every earlier run's)."""
    reports = [record.get("stage2", {})] + [c.get("report", {}) for c in record.get(CONTINUATIONS, [])]
    return int(reports[-1].get("prompts", 0))


def continuation_run(run_dir: str | os.PathLike[str], folder: str | os.PathLike[str],
                     continuation: StudentContinuation) -> RunFolder:
    """The run folder ``<run_dir>/stage2b`` of continuing the student in ``folder``.

    Bound to the LoRA's tensors (not its file: the record's seconds differ between runs) and to the
    seed and seam weight; ``steps`` is left out so a finished continuation can be extended.
    """
    tensors, _ = read_lora(Path(folder) / LORA_FILE)
    settings = {k: v for k, v in continuation.to_dict().items() if k != "steps"}
    lora = tensors_digest([t for _, t in sorted(tensors.items())])
    return RunFolder(run_dir, "stage2b", {"stage": "2b", "lora": lora, "settings": settings})


def continue_student(
    teacher: Teacher,
    folder: str | os.PathLike[str],
    continuation: StudentContinuation,
    *,
    progress=None,
    run: RunFolder | None = None,
) -> tuple[Teacher, Teacher, dict[str, Any]]:
    """Continue the on-policy stage 2 of the student in ``folder``; returns (stage 1, student, record).

    Args:
        teacher: the softmax teacher the student was converted from (unchanged).
        folder: the student's files (``teacher_phi.safetensors``, ``student_lora.safetensors``).
        continuation: steps, seed and seam weight.
        progress: ``progress("stage 2b", step, total, loss)`` after every step.
        run: a run folder to checkpoint into and resume from (None: no checkpoints).

    Returns:
        The stage-1 model (φ from the file), the student (adapters attached, not merged) and the
        base record with this continuation appended under ``"continuations"``. Training runs at the
        base recipe's ``overlap_frames``; both models come back at its ``student_overlap_frames``.
    """
    from .train import lora_only

    folder = Path(folder)
    lora_path = folder / LORA_FILE
    tensors, record = read_lora(lora_path)
    recipe = _base_recipe(record, lora_path)
    if recipe.stage2_data != "trajectories":
        raise ValueError(f"{lora_path} was fine-tuned on {recipe.stage2_data!r}; a continuation runs "
                         "on-policy stage 2 and needs a student made with stage2_data='trajectories'")
    stage1 = load_student(teacher, folder, stage="stage1")  # φ at the To its file records (sampling)
    set_overlap_frames(stage1.dit, recipe.overlap_frames)  # stage 2b trains at stage 2's To
    settings = replace(recipe, stage2_steps=continuation.steps, stage2_seed=continuation.seed)
    started = time.perf_counter()
    student, report = run_stage2_on_trajectories(
        stage1, teacher, settings, lora_only, progress, run,
        initial_lora=tensors, first_prompt=next_prompt_index(record),
        seam_weight=continuation.seam_weight, label="stage 2b",
    )
    for model in (stage1, student):
        set_overlap_frames(model.dit, recipe.student_overlap_frames)
    entry = {
        "settings": continuation.to_dict(),
        "from_lora_sha256": file_digest(lora_path),
        "report": report,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return stage1, student, {**record, CONTINUATIONS: [*record.get(CONTINUATIONS, []), entry]}


__all__ = ["continuation_run", "continue_student", "next_prompt_index"]
