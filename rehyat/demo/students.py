"""The demo's ReHyAt models: the shipped student, or both stages trained live (``--retrain``).

Both give two converted copies of the teacher — ``"student"`` (stage-1 φ + stage-2 fine-tune) and
``"stage1"`` (stage-1 φ only) — and a JSON-able record of where they came from. The package
:mod:`rehyat.student` does the work; this module only plans it (checking the demo's options first,
so nothing runs on options that would fail later) and shows progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..teacher.model import Teacher
from .options import check_chunking

RETRAIN_ONLY = {  # DemoConfig field → (CLI option, StudentRecipe field)
    "distill_steps": ("--distill-steps", "stage1_steps"),
    "distill_trajectory_steps": ("--distill-trajectory-steps", "stage1_trajectory_steps"),
    "distill_prompts": ("distill_prompts", "stage1_prompts"),
    "finetune_steps": ("--finetune-steps", "stage2_steps"),
    "finetune_data": ("--finetune-data", "stage2_data"),
}


@dataclass(frozen=True)
class StudentPlan:
    """What the demo will use: the shipped files in ``folder`` or a live run of ``recipe``."""

    retrain: bool
    chunk_frames: int
    overlap_frames: int
    folder: Path | None = None
    recipe: Any = None  # rehyat.student.StudentRecipe when retraining

    @property
    def continuation(self) -> Any:
        """The shipped stage 2b when retraining with the shipped budgets (then the result is the shipped
        student); None otherwise (other budgets train stages 1 and 2 only)."""
        from ..student.recipe import SHIPPED_CONTINUATION, StudentRecipe

        return SHIPPED_CONTINUATION if self.retrain and self.recipe == StudentRecipe() else None

    def seconds(self) -> float:
        """A rough CPU time of the live training on one core."""
        extra = self.continuation.estimated_seconds(self.recipe) if self.continuation is not None else 0.0
        return self.recipe.estimated_seconds() + extra

    def describe(self) -> str:
        """One status line."""
        if not self.retrain:
            return (
                f"ReHyAt: the shipped student ({self.folder}), Tc={self.chunk_frames}, "
                f"To={self.overlap_frames}"
            )
        return (
            f"--retrain: training both stages live — stage 1: {self.recipe.stage1_steps} φ distillation "
            f"steps, stage 2: {self.recipe.stage2_steps} fine-tune steps"
            + (f", stage 2b: {self.continuation.steps} more steps" if self.continuation is not None else "")
            + f", Tc={self.chunk_frames}, To={self.overlap_frames}"
            + (f" (trained at To={self.recipe.overlap_frames})"
               if self.recipe.overlap_frames != self.overlap_frames else "")
            + f"; about {format_duration(self.seconds())} "
            "on one CPU core"
        )


def plan_student(
    options: Any, training_frames: int, folder: str | os.PathLike[str]
) -> StudentPlan:
    """Check the demo's student options (a :class:`rehyat.demo.pipeline.DemoConfig`) before any work.

    Raises:
        ValueError: naming the option, for live-training options without ``--retrain``, ``--retrain``
            with ``--no-distill``, a Tc / To φ cannot be distilled for on the teacher's clips, a Tc / To
            other than the shipped student's without ``--retrain``, or missing student files.
    """
    from ..student import StudentRecipe

    recipe = StudentRecipe()
    if options.retrain:
        if options.no_distill:
            raise ValueError(
                "--no-distill and --retrain contradict each other: --retrain trains the student live, "
                "--no-distill (the default now) uses the shipped one — drop one of them"
            )
        chunk = recipe.chunk_frames if options.chunk_frames is None else options.chunk_frames
        changes: dict[str, Any] = {"chunk_frames": chunk}
        if options.chunk_frames is not None or options.overlap_frames is not None:
            # another chunking: trained and sampled at one To (the asked one, else the recipe's)
            overlap = recipe.overlap_frames if options.overlap_frames is None else options.overlap_frames
            changes.update(overlap_frames=overlap, sampling_overlap_frames=None)
        for field, (_, recipe_field) in RETRAIN_ONLY.items():
            if getattr(options, field) is not None:
                changes[recipe_field] = getattr(options, field)
        check_chunking(chunk, changes.get("overlap_frames", recipe.overlap_frames), training_frames)
        recipe = dataclasses.replace(recipe, **changes)
        check_chunking(chunk, recipe.student_overlap_frames, training_frames)
        return StudentPlan(True, chunk, recipe.student_overlap_frames, recipe=recipe)

    for field, (option, _) in RETRAIN_ONLY.items():
        if getattr(options, field) is not None:
            raise ValueError(
                f"{option} sets the live training of --retrain: add --retrain to train the student live "
                f"(about {format_duration(recipe.estimated_seconds())}), or drop {option} to use the "
                "shipped student"
            )
    if options.chunk_frames is not None or options.overlap_frames is not None:  # the range first
        check_chunking(
            recipe.chunk_frames if options.chunk_frames is None else options.chunk_frames,
            recipe.student_overlap_frames if options.overlap_frames is None else options.overlap_frames,
            training_frames,
        )
    folder = Path(folder)
    shipped = shipped_chunking(folder, recipe)
    for name, option, verb in (("chunk_frames", "--chunk-frames", "was trained with"),
                               ("overlap_frames", "--overlap-frames", "samples with")):
        wanted, have = getattr(options, name), shipped[name]
        if wanted is not None and wanted != have:
            chunk, overlap = (
                shipped[n] if getattr(options, n) is None else getattr(options, n)
                for n in ("chunk_frames", "overlap_frames")
            )
            check_chunking(chunk, overlap, training_frames)  # out of range: say the range first
            raise ValueError(
                f"{option} {wanted}: the shipped student {verb} {option} {have}; use {have}, or "
                f"add --retrain to train a student for {option} {wanted} "
                f"(about {format_duration(recipe.estimated_seconds())})"
            )
    return StudentPlan(False, shipped["chunk_frames"], shipped["overlap_frames"], folder=folder)


def shipped_chunking(folder: Path, recipe: Any) -> dict[str, int]:
    """Tc and To of the student files in ``folder`` (read from the φ file's metadata, no weights)."""
    from ..student import PHI_FILE, student_files_present
    from ..weights import load_phi_weights

    if not student_files_present(folder):
        missing = [n for n in _student_files() if not (folder / n).is_file()]
        raise ValueError(
            f"no shipped student in {folder} (missing {', '.join(missing)}): add --retrain to train it "
            f"live (about {format_duration(recipe.estimated_seconds())}), or pass --student-dir DIR"
        )
    attention = load_phi_weights(folder / PHI_FILE).config.attention
    return {"chunk_frames": attention.chunk_frames, "overlap_frames": attention.overlap_frames}


def obtain_students(
    teacher: Teacher,
    plan: StudentPlan,
    *,
    save_to: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Teacher], dict[str, Any]]:
    """The ``{"student", "stage1"}`` models of ``plan`` and a record (``source``, files, report).

    Retraining shows a progress bar per stage; the trained student's files (the stage-1 φ and the
    stage-2 LoRA, as :func:`rehyat.student.save_student` writes them) go to ``save_to`` so a later
    run can use them with ``--student-dir``, and both stages checkpoint into
    ``<save_to>/retrain_runs/<recipe digest>``: an interrupted ``--retrain`` started again carries on.
    """
    log(plan.describe())
    if not plan.retrain:
        from ..student import load_student

        models = {stage: load_student(teacher, plan.folder, stage=stage) for stage in ("student", "stage1")}
        files = {n: str(plan.folder / n) for n in _student_files()}
        return models, {"source": "shipped", "folder": str(plan.folder), "files": files}

    from tqdm import tqdm

    from ..student import train_student

    bars: dict[str, Any] = {}
    descriptions = {"stage 1": "stage 1: distilling φ", "stage 2": "stage 2: fine-tuning (LoRA)",
                    "stage 2b": "stage 2b: fine-tuning further (LoRA)"}

    def on_progress(stage: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(
                total=total, desc=descriptions.get(stage, stage), disable=not progress, unit="step"
            )
        bar.update(max(step - bar.n, 0))
        bar.set_postfix(loss=f"{loss:.4f}")
        if stage == "stage 1" and step >= total:  # what follows the last step is not silent either
            bar.close()
            log("stage 1: measuring φ's attention error on held-out teacher trajectories …")

    run_dir = None if save_to is None else save_to / "retrain_runs" / recipe_digest(plan.recipe)
    if run_dir is not None:
        log(f"checkpoints: {run_dir} (an interrupted --retrain started again carries on from there)")
    try:
        result = train_student(teacher, plan.recipe, progress=on_progress, log=log, run_dir=run_dir,
                               continuation=plan.continuation)
    finally:
        for bar in bars.values():
            bar.close()
    record: dict[str, Any] = {"source": "retrained", "report": result.report, "seconds": result.seconds}
    if save_to is not None:
        from ..student import save_student

        paths = save_student(result.stage1, result.student, save_to, result.report, replace=True)
        record["files"] = {p.name: str(p) for p in paths}
    _merge_adapters(result.student)
    return {"student": result.student, "stage1": result.stage1}, record


def recipe_digest(recipe: Any) -> str:
    """A short digest of every field of a :class:`~rehyat.student.StudentRecipe` (names the demo's retrain
    run folder)."""
    text = json.dumps(recipe.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"9 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _merge_adapters(model: Teacher) -> None:
    """Fold LoRA adapters (if any) into the weights: the student then samples as fast as stage 1."""
    from ..training.lora import lora_modules, merge_lora

    if any(True for _ in lora_modules(model.dit)):
        merge_lora(model.dit)


def _student_files() -> list[str]:
    from ..student import LORA_FILE, PHI_FILE

    return [PHI_FILE, LORA_FILE]
