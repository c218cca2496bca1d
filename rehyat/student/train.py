"""Both stages of the ReHyAt conversion of the embedded teacher, run live.

Stage 1 distils φ of every block against the softmax teacher on its own sampling trajectories
(:func:`rehyat.teacher.distillation.distil_on_teacher`; only φ trains). Stage 2 fine-tunes LoRA
adapters on every linear of the transformer blocks while φ stays at its stage-1 values. By default
(``StudentRecipe.stage2_data="trajectories"``, :mod:`rehyat.student.onpolicy`) it regresses the
softmax teacher's velocity at the states the student's own guided sampler visits; with ``"clips"``
it uses the flow-matching loss (:func:`rehyat.training.finetune.finetune`) on clips of the teacher's
training distribution — the procedural generator's clips, the "videos" of this world — with the
teacher's velocity on the same noised clip as the target (``stage2_target``; same minimiser as
noise − x0, much lower variance). Either way the pixels a shape covers weigh 5× as in the teacher's
own training (``stage2_foreground_weight``).
Why LoRA with φ frozen: stage 2 must recover what causality costs (the first chunk sees no future),
which lives in the block weights, not in φ; and the adapters are ~1/20 of the model, so the shipped
student (stage-1 φ + adapters) stays within the assets' size budget.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.wan_rehyat import convert, set_overlap_frames
from ..teacher.distillation import distil_on_teacher, generator_prompts
from ..teacher.evaluate import held_out_pairs
from ..teacher.model import Teacher, latent_to_pixels, pixels_to_latent
from ..teacher.shapes import generate_clip
from ..teacher.train import content_weight
from ..training.dataset import LatentDataset
from ..training.finetune import FinetuneConfig, finetune
from ..training.flow_matching import FlowMatchingConfig
from ..training.runs import RunFolder, tensors_digest
from ..training.trainable import Trainable, phi_parameter_names, select_trainable
from .continuation import continuation_run, continue_student
from .files import save_student
from .onpolicy import run_stage2_on_trajectories
from .recipe import STAGE2_FIRST_SEED, StudentContinuation, StudentRecipe

Progress = Callable[[str, int, int, float], None]
HELD_OUT_SCENES = 48  # the evaluation pairs whose scenes stage 1 never sees


@dataclass
class StudentResult:
    """What :func:`train_student` made.

    Attributes:
        stage1: the teacher converted with the stage-1 φ (a new :class:`Teacher`).
        student: stage 1 + stage 2 (LoRA adapters attached, trained; :func:`rehyat.training.lora.merge_lora`
            folds them in).
        report: JSON-able record (budgets, losses, seconds) stored with the shipped files.
        seconds: wall seconds per stage.
    """

    stage1: Teacher
    student: Teacher
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def stage1_prompts(recipe: StudentRecipe) -> list[str]:
    """Stage 1's generator prompts (none shares a scene with the held-out evaluation pairs)."""
    held_out = [prompt for prompt, _ in held_out_pairs(HELD_OUT_SCENES)]
    return generator_prompts(recipe.stage1_prompts, exclude=held_out)


STAGE1_FIELDS = (
    "chunk_frames", "overlap_frames", "stage1_steps", "stage1_prompts", "stage1_trajectory_steps",
    "stage1_lr", "phi_seed",
)


def stage_runs(run_dir: str | Path, teacher: Teacher, recipe: StudentRecipe) -> tuple[RunFolder, Callable]:
    """The stage-1 run folder ``<run_dir>/stage1`` and a maker of the stage-2 one (``<run_dir>/stage2``).

    Identities: stage 1 is bound to the teacher's weights and the stage-1 fields of ``recipe``;
    stage 2 to the teacher, the stage-1 φ it starts from and every field but ``stage2_steps`` (so a
    finished stage 2 can be extended to more steps). Another teacher or recipe in the same folder is
    refused with the differing keys.
    """
    teacher_digest = tensors_digest(list(teacher.state_dict().values()))
    settings = recipe.to_dict()
    stage1 = RunFolder(run_dir, "stage1", {"stage": 1, "teacher": teacher_digest,
                                           "recipe": {k: settings[k] for k in STAGE1_FIELDS}})

    def stage2(stage1_model: Teacher) -> RunFolder:
        phi = tensors_digest([t for _, t in sorted(_phi_tensors(stage1_model).items())])
        rest = {k: v for k, v in settings.items() if k not in ("stage2_steps", "sampling_overlap_frames")}
        identity = {"stage": 2, "teacher": teacher_digest, "phi": phi, "recipe": rest}
        return RunFolder(run_dir, "stage2", identity)

    return stage1, stage2


def _phi_tensors(model: Teacher) -> dict[str, torch.Tensor]:
    names = phi_parameter_names(model.dit)
    return {name: param for name, param in model.dit.named_parameters() if name in names}


def run_stage1(
    teacher: Teacher, recipe: StudentRecipe, progress: Progress | None = None, run: RunFolder | None = None
) -> tuple[Teacher, dict[str, Any]]:
    """Distil φ; returns (a converted copy of ``teacher``, the distillation report).

    ``run``: a run folder to checkpoint into and resume from (None: no checkpoints).
    """
    on_step = None if progress is None else (lambda step, total, loss: progress("stage 1", step, total, loss))
    hybrid, report = distil_on_teacher(
        teacher,
        recipe.conversion,
        steps=recipe.stage1_steps,
        prompts=stage1_prompts(recipe),
        sampling=teacher.config.sampling,
        trajectory_steps=recipe.stage1_trajectory_steps,
        lr=recipe.stage1_lr,
        phi_seed=recipe.phi_seed,
        on_step=on_step,
        run=run,
    )
    stage1 = copy.deepcopy(teacher)
    convert(stage1.dit, recipe.conversion, hybrid)
    return stage1.eval(), report


def generator_dataset(teacher: Teacher, folder: Path, recipe: StudentRecipe) -> LatentDataset:
    """``recipe.stage2_clips`` generator clips (training length) with their text features (built once)."""
    dataset = LatentDataset(
        folder,
        model={"name": "rehyat embedded teacher world", "in_dim": teacher.config.dit.in_dim,
               "frames": recipe.stage2_frames or teacher.config.clip.frames},
    )
    spec = teacher.config.clip
    frames = recipe.stage2_frames or spec.frames
    with torch.no_grad():
        for index in range(len(dataset), recipe.stage2_clips):
            seed = STAGE2_FIRST_SEED + index
            clip = generate_clip(seed, spec, frames=frames)
            every = recipe.empty_prompt_every
            empty = every > 0 and index % every == every - 1
            prompt = "" if empty else clip.prompt
            latent = pixels_to_latent(clip.pixels[None], teacher.config.fold)[0]  # (C, T, h, w)
            context = teacher.encode([prompt])[0]  # (L, D)
            dataset.append(latent, context, {"source": "generator", "seed": seed, "prompt": prompt})
    return dataset


def lora_only(model: torch.nn.Module, rank: int) -> Trainable:
    """Attach LoRA adapters to ``model``'s block linears and train only them (φ frozen)."""
    trainable = select_trainable(model, "lora", lora_rank=rank)
    phi = phi_parameter_names(model)
    for name in phi:
        trainable.parameters.pop(name, None)
    for name, param in model.named_parameters():
        if name in phi:
            param.requires_grad_(False)
    return trainable


def stage2_weight(recipe: StudentRecipe, fold: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Stage 2's loss weights of a batch of clean latents (None: uniform)."""
    if recipe.stage2_foreground_weight <= 0:
        return None

    def weight(x0: torch.Tensor) -> torch.Tensor:  # (B, C, T, h, w) → same shape
        return content_weight(latent_to_pixels(x0, fold), recipe.stage2_foreground_weight, fold)

    return weight


def run_stage2(
    stage1: Teacher,
    recipe: StudentRecipe,
    work_dir: Path,
    progress: Progress | None = None,
    teacher: Teacher | None = None,
    run: RunFolder | None = None,
) -> tuple[Teacher, dict[str, Any]]:
    """Fine-tune a copy of ``stage1`` (LoRA, φ frozen); returns (the student with adapters, a report).

    ``teacher`` (the softmax teacher) is needed when ``recipe.stage2_target == "teacher"``.
    ``run``: a run folder to checkpoint into and resume from (None: no checkpoints).
    """
    if (recipe.stage2_target == "teacher" or recipe.stage2_data == "trajectories") and teacher is None:
        raise ValueError("stage 2 with the teacher's velocity as target needs the softmax teacher "
                         "(teacher=None was given)")
    if recipe.stage2_data == "trajectories":
        return run_stage2_on_trajectories(stage1, teacher, recipe, lora_only, progress, run)
    student = copy.deepcopy(stage1)
    dataset = generator_dataset(student, work_dir / "stage2_clips", recipe)
    settings = FinetuneConfig(
        trainable="lora",
        lora_rank=recipe.lora_rank,
        steps=recipe.stage2_steps,
        batch_size=recipe.stage2_batch,
        micro_batch=recipe.stage2_batch,
        learning_rate=recipe.stage2_lr,
        warmup_steps=min(recipe.stage2_warmup, recipe.stage2_steps),
        checkpoint_every=max(min(recipe.stage2_steps, 50), 1),
        seed=recipe.stage2_seed,
        flow=FlowMatchingConfig(shift=student.config.sampling.shift, sampling="logit_normal"),
    )
    dit = student.dit
    torch.manual_seed(recipe.stage2_seed)  # the adapters' initialisation
    trainable = lora_only(dit, recipe.lora_rank)
    on_step = None if progress is None else (lambda step, total, loss: progress("stage 2", step, total, loss))
    target_fn = teacher.dit if recipe.stage2_target == "teacher" else None
    result = finetune(dit, lambda x, t, context: dit(x, t, context), dataset, settings, trainable=trainable,
                      run=run, progress=on_step, target_fn=target_fn,
                      weight_fn=stage2_weight(recipe, student.config.fold))
    dit.eval().requires_grad_(False)
    report = {
        "trainable": "LoRA on every block linear (φ frozen at stage 1)",
        "target": "the softmax teacher's velocity" if target_fn is not None else "noise - x0",
        "foreground_weight": recipe.stage2_foreground_weight,
        "trained_parameters": trainable.count,
        "samples": len(dataset),
        "data": f"generator clips from seed {STAGE2_FIRST_SEED}; "
        f"every {recipe.empty_prompt_every}th with the empty prompt",
        "first_losses": result.losses[:5],
        "last_losses": result.losses[-5:],
        "loss_curve": result.losses,
    }
    return student.eval(), report


def train_student(
    teacher: Teacher,
    recipe: StudentRecipe | None = None,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    work_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    continuation: StudentContinuation | None = None,
) -> StudentResult:
    """Run stage 1 and stage 2 on ``teacher`` (unchanged); returns both models and a report.

    Both stages train at ``recipe.overlap_frames``; the returned models sample at
    ``recipe.student_overlap_frames`` (and :func:`~rehyat.student.files.save_student` records it).

    Args:
        teacher: the softmax teacher.
        recipe: budgets (defaults: the shipped student's).
        progress: ``progress(stage, step, total, loss)`` after every step of either stage.
        log: status lines (one per stage).
        work_dir: where stage 2's clip dataset goes (default: ``run_dir``, else a temporary folder,
            removed after).
        run_dir: resumable checkpoints of both stages (``<run_dir>/stage1``, ``<run_dir>/stage2``,
            see :func:`stage_runs`): an interrupted run given the same folder carries on from its
            last checkpoint, to the same numbers. None: no checkpoints.
        continuation: stage 2b after stage 2 (:func:`rehyat.student.continuation.continue_student`):
            the student is saved as shipped (fp16; into ``<run_dir>/stage2_files`` or a temporary
            folder) and continued from those files, so the result equals continuing the saved files
            with ``train-student --continue-from``.
    """
    recipe = recipe or StudentRecipe()
    if continuation is not None and (not recipe.stage2_steps or recipe.stage2_data != "trajectories"):
        raise ValueError("a continuation (stage 2b) carries on on-policy stage 2: it needs stage2_steps ≥ 1 "
                         "and stage2_data='trajectories'")
    stage1_run, stage2_run = stage_runs(run_dir, teacher, recipe) if run_dir is not None else (None, None)
    if work_dir is None and run_dir is not None:
        work_dir = run_dir
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    log(f"stage 1: distilling φ of {teacher.config.dit.num_layers} blocks, {recipe.stage1_steps} steps")
    stage1, stage1_report = run_stage1(teacher, recipe, progress, stage1_run)
    seconds["stage1"] = time.perf_counter() - started
    student = copy.deepcopy(stage1)
    stage2_report: dict[str, Any] = {"skipped": "stage2_steps = 0"}
    if recipe.stage2_steps:
        log(f"stage 2: flow-matching fine-tune (LoRA r={recipe.lora_rank}), {recipe.stage2_steps} steps")
        started = time.perf_counter()
        run = stage2_run(stage1) if stage2_run is not None else None
        if work_dir is None:
            with tempfile.TemporaryDirectory(prefix="rehyat-stage2-") as tmp:
                student, stage2_report = run_stage2(stage1, recipe, Path(tmp), progress, teacher, run)
        else:
            student, stage2_report = run_stage2(stage1, recipe, Path(work_dir), progress, teacher, run)
        seconds["stage2"] = time.perf_counter() - started
    report = {
        "recipe": recipe.to_dict(),
        "stage1": _jsonable(stage1_report),
        "stage2": stage2_report,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for model in (stage1, student):  # trained at recipe.overlap_frames; sampled (and saved) at this To
        set_overlap_frames(model.dit, recipe.student_overlap_frames)
    if continuation is not None:
        log(f"stage 2b: {continuation.steps} more on-policy steps from the saved student "
            f"(seam weight {continuation.seam_weight:g})")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rehyat-stage2b-") as tmp:
            files = Path(run_dir) / "stage2_files" if run_dir is not None else Path(tmp)
            save_student(stage1, student, files, report, replace=True)
            run = continuation_run(run_dir, files, continuation) if run_dir is not None else None
            stage1, student, report = continue_student(teacher, files, continuation, progress=progress,
                                                       run=run)
        seconds["stage2b"] = time.perf_counter() - started
    return StudentResult(stage1=stage1, student=student, report=report, seconds=seconds)


def _jsonable(value: Any) -> Any:
    """``value`` with tensors and tuples turned into lists, and non-JSON leaves into strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
