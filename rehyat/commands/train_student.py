"""``python -m rehyat train-student`` — reproduce the shipped ReHyAt student of the embedded teacher.

Runs the paper's two stages on the teacher in ``--teacher-dir`` (default: the shipped one): stage 1
distils φ of every block against the softmax teacher, stage 2 fine-tunes LoRA adapters (φ frozen) on
the states the student's own guided sampler visits, regressing the softmax teacher's velocity there
(shapes weighted 5×; ``--stage2-data clips`` uses noised generator clips instead). ``--export DIR``
writes the student's files — ``teacher_phi.safetensors`` (stage-1 φ, fp16) and
``student_lora.safetensors`` (ComfyUI LoRA format, fp16) — atomically; existing files are replaced
only with ``--overwrite``. Every stage trains at To = ``StudentRecipe.overlap_frames`` (1); the
φ file records ``sampling_overlap_frames`` (3), the To the student is sampled with. Both stages
checkpoint into ``--run-dir/--run-name`` (default ``rehyat_runs/student``): after an
interruption the same command carries on from the last checkpoint to the same numbers, and a
finished run given more ``--stage2-steps`` is extended.
The shipped files are exactly ``python -m rehyat train-student --threads 1
--export rehyat/assets --overwrite`` (the LoRA's metadata records the command, budgets, losses and
seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "train-student"
HELP = "run both ReHyAt stages (φ distillation, LoRA fine-tune) on the embedded teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-student`` options (defaults shown from :class:`rehyat.student.StudentRecipe`)."""
    from ..student.recipe import SHIPPED_CONTINUATION, StudentContinuation, StudentRecipe

    recipe = StudentRecipe()
    parser.add_argument("--teacher-dir", default=None, help="teacher files (default: the shipped ones)")
    parser.add_argument(
        "--stage1-steps", type=int, default=None,
        help=f"φ distillation steps (default {recipe.stage1_steps})",
    )
    parser.add_argument(
        "--stage2-steps", type=int, default=None,
        help=f"fine-tune steps, 0: none (default {recipe.stage2_steps})",
    )
    parser.add_argument(
        "--phi-seed", type=int, default=None, help=f"seed of φ's initialisation (default {recipe.phi_seed})"
    )
    parser.add_argument(
        "--stage2-seed", type=int, default=None,
        help=f"seed of stage 2's data order, noise and LoRA initialisation (default {recipe.stage2_seed})",
    )
    parser.add_argument(
        "--stage2-data", choices=("clips", "trajectories"), default=None,
        help="stage 2 inputs: the student's own sampling trajectories (default; on-policy) or "
        "noised generator clips (≈ 3× faster, visibly worse seams at 64 frames)",
    )
    parser.add_argument(
        "--run-dir", default="rehyat_runs", help="folder holding run folders (default: rehyat_runs)"
    )
    parser.add_argument(
        "--run-name", default="student",
        help="run folder name: checkpoints of both stages; the same name resumes (default: student)",
    )
    parser.add_argument(
        "--continue-from", default=None, metavar="DIR",
        help="stage 2b only: carry on the on-policy stage 2 of the student files in DIR (their φ and "
        "LoRA, as shipped) instead of training stages 1 and 2",
    )
    shipped = SHIPPED_CONTINUATION
    parser.add_argument(
        "--continue-steps", type=int, default=None,
        help="stage-2b steps; 0: none (default "
        + (f"{shipped.steps}, as the shipped student" if shipped
           else f"none; with --continue-from {StudentContinuation().steps}")
        + ")",
    )
    parser.add_argument(
        "--continue-seed", type=int, default=None,
        help=f"seed of stage 2b's data order (default {(shipped or StudentContinuation()).seed})",
    )
    parser.add_argument(
        "--seam-weight", type=float, default=None,
        help="weight of stage 2b's boundary-step loss (the change of the velocity error across a chunk "
        f"boundary), 0: plain loss (default {(shipped or StudentContinuation()).seam_weight:g})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--export", default=None, metavar="DIR", help="write the student's files into DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")


def continuation_from_args(args: argparse.Namespace) -> Any:
    """The stage-2b :class:`~rehyat.student.recipe.StudentContinuation` the flags ask for (None: no 2b)."""
    from dataclasses import replace

    from ..student.recipe import SHIPPED_CONTINUATION, StudentContinuation

    if args.continue_steps == 0:
        if args.continue_from is not None:
            raise ValueError("--continue-steps must be ≥ 1 with --continue-from")
        return None
    base = SHIPPED_CONTINUATION
    asked = args.continue_from is not None or any(
        v is not None for v in (args.continue_steps, args.continue_seed, args.seam_weight)
    )
    if base is None and not asked:
        return None
    overrides = {
        name: value
        for name, value in (("steps", args.continue_steps), ("seed", args.continue_seed),
                            ("seam_weight", args.seam_weight))
        if value is not None
    }
    try:
        return replace(base or StudentContinuation(), **overrides)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('_', '-')}") from None


def run(args: argparse.Namespace) -> int:
    """Train both stages (and stage 2b), or only stage 2b with ``--continue-from``; optionally export."""
    from dataclasses import replace
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from ..student import LORA_FILE, PHI_FILE, StudentRecipe, save_student, train_student
    from ..student.continuation import continuation_run, continue_student
    from ..teacher.model import load_teacher
    from ..training.runs import validate_run_name

    validate_run_name(args.run_name, "--run-name")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    overrides = {
        name: value
        for name, value in (
            ("stage1_steps", args.stage1_steps),
            ("stage2_steps", args.stage2_steps),
            ("phi_seed", args.phi_seed),
            ("stage2_seed", args.stage2_seed),
            ("stage2_data", args.stage2_data),
        )
        if value is not None
    }
    if args.continue_from is not None and overrides:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in overrides)
        raise ValueError(f"--continue-from runs stage 2b only: {flags} belong to stages 1 and 2 — drop them")
    try:
        recipe = replace(StudentRecipe(), **overrides)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('_', '-')}") from None
    continuation = continuation_from_args(args)
    if args.export is not None and not args.overwrite:
        for name in (PHI_FILE, LORA_FILE):
            existing = Path(args.export) / name
            if existing.exists():
                raise ValueError(f"--export: {existing} exists; pass --overwrite to replace it")
    teacher = load_teacher(args.teacher_dir)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(stage)
        if bar is None:  # a resumed run starts its bar at the step it resumed from
            bar = bars[stage] = tqdm(total=total, initial=step - 1, desc=stage, unit="step", file=sys.stderr)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}")

    run_dir = Path(args.run_dir) / args.run_name
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    log(f"checkpoints: {run_dir} (run the same command again to resume)")
    if args.continue_from is not None:
        log(f"stage 2b: {continuation.steps} on-policy steps from {args.continue_from}")
        stage1, student, report = continue_student(
            teacher, args.continue_from, continuation, progress=progress,
            run=continuation_run(run_dir, args.continue_from, continuation),
        )
    else:
        log(f"both stages: about {recipe.estimated_seconds() / 60:.0f} min on one CPU core"
            + (f" (+ stage 2b, {continuation.steps} steps)" if continuation else ""))
        result = train_student(teacher, recipe, progress=progress, log=log, run_dir=run_dir,
                               continuation=continuation)
        stage1, student, report = result.stage1, result.student, result.report
    for bar in bars.values():
        bar.close()
    summary = {"seconds": report["seconds"], "recipe": report["recipe"],
               "continuations": [c["settings"] for c in report.get("continuations", [])]}
    if args.export is not None:
        stage2b_flags = (("continue-steps", args.continue_steps), ("continue-seed", args.continue_seed),
                         ("seam-weight", args.seam_weight))
        command = " ".join(
            ["python -m rehyat train-student"]
            + [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
            + ([f"--continue-from {args.continue_from}"] if args.continue_from else [])
            + [f"--{flag} {value}" for flag, value in stage2b_flags if value is not None]
            + ([f"--threads {args.threads}"] if args.threads else [])
            + [f"--export {args.export}"]
            + (["--overwrite"] if args.overwrite else [])
        )
        if args.continue_from is not None:  # the base files keep their own command
            report["continuations"][-1]["command"] = command
        else:
            report = {**report, "command": command}
        paths = save_student(stage1, student, args.export, report, replace=args.overwrite)
        summary["exported"] = [str(p) for p in paths]
    print(json.dumps(summary, indent=2))
    return 0
