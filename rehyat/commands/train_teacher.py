"""``python -m rehyat train-teacher`` — reproduce the embedded teacher's weights.

Trains the small Wan2.1-architecture teacher from scratch with flow matching on procedurally
generated clips of bouncing, colliding shapes (rehyat/teacher/). The run folder holds atomic
checkpoints: run the same command again to resume where it stopped (an interrupted run loses at
most ``--checkpoint-every`` steps). ``--export DIR`` writes the teacher files (EMA weights,
config, training log) from the latest checkpoint, e.g. into ``rehyat/assets`` to ship them.

The shipped teacher is exactly ``python -m rehyat train-teacher --threads 1 --export rehyat/assets``
(4,800 steps of 8 clips, about an hour on one core of the 2-core CI machine; ``teacher.json`` records
the command, the steps and the seconds). ``--max-steps`` / ``--max-hours`` run it in pieces; one
thread makes the arithmetic, and so the weights, independent of the machine's core count.
"""

from __future__ import annotations

import argparse
import json

NAME = "train-teacher"
HELP = "train (or resume) the embedded teacher from scratch on procedural shape clips"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-teacher`` options."""
    parser.add_argument(
        "--run-dir", default="rehyat_runs", help="folder holding run folders (default: rehyat_runs)"
    )
    parser.add_argument("--run-name", default="teacher", help="run folder name; the same name resumes")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimiser steps of the schedule (default 4800)"
    )
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default 8)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    parser.add_argument(
        "--max-hours", type=float, default=None, help="stop after this much wall time in this call"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="after training, write the teacher files (EMA weights, config, log) into DIR",
    )
    parser.add_argument(
        "--export-only", action="store_true", help="only export the latest checkpoint (needs --export)"
    )


def run(args: argparse.Namespace) -> int:
    """Train / resume, then optionally export; prints a JSON summary."""
    import torch

    from ..teacher.train import TrainConfig, export_teacher, train_teacher

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.max_hours is not None and args.max_hours <= 0:
        raise ValueError(f"--max-hours must be > 0; got {args.max_hours}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be ≥ 1; got {args.max_steps}")
    if args.export_only and not args.export:
        raise ValueError("--export-only needs --export DIR")
    overrides = {k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v is not None}
    train = TrainConfig(**overrides)
    summary: dict = {}
    if not args.export_only:
        summary = train_teacher(
            args.run_dir,
            args.run_name,
            train=train,
            max_steps=args.max_steps,
            max_seconds=None if args.max_hours is None else args.max_hours * 3600,
        )
    if args.export:
        command = " ".join(
            ["python -m rehyat train-teacher"]
            + [
                f"--{name.replace('_', '-')} {value}"
                for name, value in (("steps", args.steps), ("batch", args.batch), ("threads", args.threads))
                if value is not None
            ]
            + [f"--export {args.export}"]
        )
        summary["exported_to"] = str(
            export_teacher(args.run_dir, args.run_name, args.export, train=train, command=command)
        )
    print(json.dumps(summary, indent=2))
    return 0
