"""``python -m rehyat evaluate`` — does the embedded teacher (or its ReHyAt student) draw its prompts?

Generates ``--clips`` held-out prompt/seed pairs (seeds 5,000,000 on, never seen in training) at
``--frames`` frames and scores each clip against the generator's ground truth
(:mod:`rehyat.teacher.evaluate`): prompted colours present, spurious colours, circle vs square,
continuous motion, moving shapes, blank frames, chunk-seam ratio. Prints the pooled JSON (and
writes it with ``--out``), including which targets pass.
"""

from __future__ import annotations

import argparse
import json

NAME = "evaluate"
HELP = "score the embedded teacher or its ReHyAt student on held-out prompts against ground truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` options."""
    parser.add_argument(
        "--model", choices=("teacher", "rehyat", "rehyat-stage1"), default="teacher", help="which model"
    )
    parser.add_argument("--clips", type=int, default=48, help="held-out prompt/seed pairs, ≥ 1 (default 48)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip, 1–1024 (default 16)")
    parser.add_argument(
        "--targets",
        choices=("teacher", "student"),
        default="teacher",
        help="thresholds to check: the teacher's issue targets or the student's (adds blank frames, seams)",
    )
    parser.add_argument("--teacher-dir", default=None, help="teacher and φ files (default: the package's)")
    parser.add_argument("--out", default=None, help="also write the JSON here (refused if it exists)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the pooled summary."""
    import sys
    from pathlib import Path

    import torch

    from ..atomic import atomic_write_bytes
    from ..student.evaluation import evaluate_model
    from ..teacher.evaluate import STUDENT_TARGETS, TEACHER_TARGETS

    if args.clips < 1:
        raise ValueError(f"--clips must be ≥ 1; got {args.clips}")
    if args.out is not None and Path(args.out).exists():
        raise ValueError(f"--out {args.out!r} exists; choose a new name (nothing is overwritten)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    targets = STUDENT_TARGETS if args.targets == "student" else TEACHER_TARGETS

    def progress(index: int, score) -> None:
        print(
            f"clip {index + 1}/{args.clips}: {score.prompt!r} presence {score.min_presence}", file=sys.stderr
        )

    summary = evaluate_model(
        args.model,
        clips=args.clips,
        frames=args.frames,
        folder=args.teacher_dir,
        targets=targets,
        on_clip=progress,
    )
    text = json.dumps({k: v for k, v in summary.items() if k != "per_clip"}, indent=2)
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(summary, indent=2) + "\n").encode(), replace=False)
    print(text)
    return 0
