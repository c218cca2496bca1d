"""``python -m rehyat evaluate`` — does the embedded teacher (or its ReHyAt student) draw its prompts?

Generates ``--clips`` held-out prompt/seed pairs (seeds 5,000,000 on, never seen in training) at
``--frames`` frames and scores each clip against the generator's ground truth
(:mod:`rehyat.teacher.evaluate`): prompted colours present, spurious colours, circle vs square,
continuous motion, moving shapes, blank frames, chunk-seam ratio. Prints the pooled JSON (and
writes it with ``--out``), including which targets pass. ``--compare FILE`` (an earlier ``--out`` of
another model on the same pairs and frames, e.g. the teacher's) adds ``"paired"``: per measure the
mean clip-by-clip difference (this model − that one) with a 95 % bootstrap interval over clips
(:mod:`rehyat.teacher.paired`).
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
        "--compare", default=None, metavar="FILE",
        help="an earlier --out JSON of another model on the same held-out pairs and --frames (it may hold "
        "more clips): adds per-measure paired differences with 95 %% bootstrap intervals",
    )
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
    reference = _read_reference(args.compare, args.clips, args.frames) if args.compare is not None else None

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
    if reference is not None:  # paired with these clips by _read_reference before generating
        from ..teacher.paired import paired_differences

        paired = paired_differences(summary["per_clip"], reference["per_clip"])
        summary["paired"] = {"reference": reference.get("model"), "file": str(args.compare), **paired}
    text = json.dumps({k: v for k, v in summary.items() if k != "per_clip"}, indent=2)
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(summary, indent=2) + "\n").encode(), replace=False)
    print(text)
    return 0


def _read_reference(path: str, clips: int, frames: int) -> dict:
    """The ``--compare`` JSON, checked against ``--clips``/``--frames`` before any clip is generated."""
    from pathlib import Path

    from ..teacher.evaluate import held_out_pairs
    from ..teacher.paired import check_pairing

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--compare {path!r}: not a readable evaluate JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("per_clip"), list):
        raise ValueError(f"--compare {path!r} has no per_clip list: pass a file written by evaluate --out")
    planned = [{"prompt": prompt, "frames": frames} for prompt, _ in held_out_pairs(clips)]
    try:
        check_pairing(planned, data["per_clip"])
    except ValueError as error:
        raise ValueError(f"--compare {path!r}: {error}") from None
    return data
