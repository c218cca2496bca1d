"""``python -m rehyat generate`` — one clip of the embedded teacher or of its ReHyAt student.

Writes a NumPy array ``.npy`` of uint8 RGB frames, shape ``(F, H, W, 3)``. The same seed gives both
models the same starting noise, so ``--model teacher`` and ``--model rehyat`` clips compare frame by
frame; the same (prompt, seed, frames) gives the same clip as the demo and the library
(:func:`rehyat.student.generate.generate_video`).

Prompts use the teacher's words: ``a <colour> <shape> [and a <colour> <shape>]
[bounces|bounce|collide]`` with colours red, green, blue, yellow, cyan, magenta and shapes circle,
square. Example::

    python -m rehyat generate --model rehyat --prompt "a red circle and a blue square collide" \\
        --seed 3 --frames 64 --out clip.npy
"""

from __future__ import annotations

import argparse
import json

NAME = "generate"
HELP = "generate one clip with the embedded teacher or its ReHyAt student → uint8 (F, H, W, 3) .npy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``generate`` options."""
    parser.add_argument(
        "--model",
        choices=("teacher", "rehyat", "rehyat-stage1"),
        default="teacher",
        help="teacher: softmax over every frame; rehyat: the shipped ReHyAt student (stage-1 φ + "
        "stage-2 LoRA), chunk by chunk; rehyat-stage1: the stage-1 φ only",
    )
    parser.add_argument("--prompt", required=True, help="what to draw, in the teacher's words (see above)")
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed, ≥ 0 (the same noise for both models)"
    )
    parser.add_argument(
        "--frames", type=int, default=16, help="video frames, 1–1024 (the teacher was trained on 16)"
    )
    parser.add_argument("--out", required=True, help="the .npy file to write (refused if it exists)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the teacher's 20)")
    parser.add_argument("--teacher-dir", default=None, help="teacher and φ files (default: the package's)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def run(args: argparse.Namespace) -> int:
    """Generate, then write the array atomically; prints a one-line JSON summary."""
    import io
    from pathlib import Path

    import numpy as np
    import torch

    from ..atomic import atomic_write_bytes
    from ..student.generate import check_frames, generate_video
    from ..teacher.text import parse_prompt, vocabulary_text

    if not args.prompt.strip():
        raise ValueError(f"--prompt is empty; {vocabulary_text()}")
    parse_prompt(args.prompt, max_shapes=2)
    check_frames(args.frames)
    if args.seed < 0:
        raise ValueError(f"--seed must be ≥ 0; got {args.seed}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must name a .npy file; got {args.out!r}")
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {args.out!r} exists; choose a new name (nothing is overwritten)")
    if not out.parent.is_dir():
        raise ValueError(f"--out: folder {str(out.parent)!r} does not exist")
    frames = generate_video(
        args.model, args.prompt, args.seed, args.frames, folder=args.teacher_dir, steps=args.steps
    ).numpy()
    buffer = io.BytesIO()
    np.save(buffer, frames)
    try:
        atomic_write_bytes(out, buffer.getvalue(), replace=False)
    except FileExistsError:
        raise ValueError(f"--out {args.out!r} appeared while generating; nothing was overwritten") from None
    print(json.dumps({"out": str(out), "shape": list(frames.shape), "dtype": "uint8", "model": args.model}))
    return 0
