"""``python -m rehyat train-student`` — reproduce the shipped ReHyAt student of the embedded teacher.

Runs the paper's two stages on the teacher in ``--teacher-dir`` (default: the shipped one): stage 1
distils φ of every block against the softmax teacher, stage 2 fine-tunes LoRA adapters (φ frozen) on
the states the student's own guided sampler visits, regressing the softmax teacher's velocity there
(shapes weighted 5×; ``--stage2-data clips`` uses noised generator clips instead). ``--export DIR``
writes the student's files — ``teacher_phi.safetensors`` (stage-1 φ, fp16) and
``student_lora.safetensors`` (ComfyUI LoRA format, fp16) — atomically; existing files are replaced
only with ``--overwrite``. Both stages checkpoint into ``--run-dir/--run-name`` (default
``rehyat_runs/student``): after an interruption the same command carries on from the last
checkpoint to the same numbers, and a finished run given more ``--stage2-steps`` is extended.
The shipped files are exactly ``python -m rehyat train-student --threads 1
--export rehyat/assets --overwrite`` (the LoRA's metadata records the command, budgets, losses and
seconds).
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "train-student"
HELP = "run both ReHyAt stages (φ distillation, LoRA fine-tune) on the embedded teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-student`` options (defaults shown from :class:`rehyat.student.StudentRecipe`)."""
    from ..student.recipe import StudentRecipe

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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--export", default=None, metavar="DIR", help="write the student's files into DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")


def run(args: argparse.Namespace) -> int:
    """Train both stages, optionally export; prints a JSON summary."""
    from dataclasses import replace
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from ..student import LORA_FILE, PHI_FILE, StudentRecipe, save_student, train_student
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
    try:
        recipe = replace(StudentRecipe(), **overrides)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('_', '-')}") from None
    if args.export is not None and not args.overwrite:
        for name in (PHI_FILE, LORA_FILE):
            existing = Path(args.export) / name
            if existing.exists():
                raise ValueError(f"--export: {existing} exists; pass --overwrite to replace it")
    teacher = load_teacher(args.teacher_dir)
    print(f"both stages: about {recipe.estimated_seconds() / 60:.0f} min on one CPU core", file=sys.stderr)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    run_dir = Path(args.run_dir) / args.run_name
    print(f"checkpoints: {run_dir} (run the same command again to resume)", file=sys.stderr)
    result = train_student(
        teacher, recipe, progress=progress, log=lambda line: print(line, file=sys.stderr), run_dir=run_dir
    )
    for bar in bars.values():
        bar.close()
    summary = {"seconds": result.report["seconds"], "recipe": recipe.to_dict()}
    if args.export is not None:
        command = " ".join(
            ["python -m rehyat train-student"]
            + [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
            + ([f"--threads {args.threads}"] if args.threads else [])
            + [f"--export {args.export}"]
            + (["--overwrite"] if args.overwrite else [])
        )
        report = {**result.report, "command": command}
        paths = save_student(result.stage1, result.student, args.export, report, replace=args.overwrite)
        summary["exported"] = [str(p) for p in paths]
    print(json.dumps(summary, indent=2))
    return 0
