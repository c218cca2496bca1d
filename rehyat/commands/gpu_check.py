"""``python -m rehyat gpu-check --out gpu.json`` — measure the pack on a CUDA device in a few minutes.

Writes one JSON report with the keys ``device``, ``op_correct`` (bf16 / fp16 ReHyAt, parallel and
recurrent, against the fp64 naive form at Wan shapes, with pass / fail against stated bounds),
``op_speed`` (one attention layer: flash SDPA vs ReHyAt parallel vs recurrent at 21 / 41 / 81 / 121
latent frames, 480×832, CUDA events, counted FLOPs, speed-up as a share of the FLOP ratio), ``dit``
(a real-shape Wan2.1-1.3B with random bf16 weights, 81–481 video frames: time and peak VRAM,
softmax vs ReHyAt recurrent vs parallel on 15 blocks) and ``sampler`` (when ComfyUI is found: one
Chunked Sampler step, streaming, vs WanContextWindowsManual at 481 frames), plus ``not_measured``.

Each part runs in its own process with a time budget (about 8 minutes in all on a data-centre GPU);
a part past its budget is stopped and recorded as skipped. ``--device cpu --tiny`` runs every part
at toy sizes (the CI run). ``--compile`` also times torch.compile'd φ in op_speed.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "gpu-check"
HELP = "measure the pack on a CUDA device (correctness, op speed, whole DiT, sampler) → JSON"


def _parts(text: str) -> tuple[str, ...]:
    from ..gpu_check import PARTS

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"--parts must be a comma-separated subset of {list(PARTS)}; got {text!r}")
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gpu-check`` options."""
    parser.add_argument("--out", required=True, help="JSON report to write (must not exist)")
    parser.add_argument("--device", default="cuda", help="cuda[:i] (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for every part (CPU / CI)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd φ in op_speed")
    parser.add_argument("--parts", type=_parts, default=None,
                        help="comma-separated subset of op_correct,op_speed,dit,sampler (default: all)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every part's time budget (default 1: about 8 minutes in all)")


def run(args: argparse.Namespace) -> int:
    """Run the check and write the report atomically; bad options raise ValueError."""
    from dataclasses import replace
    from pathlib import Path

    from ..atomic import atomic_write_bytes
    from ..gpu_check import PARTS, GpuCheckConfig, run_gpu_check, tiny_config

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new file name (never overwritten)")
    if not out.parent.is_dir() and str(out.parent):
        raise ValueError(f"--out: directory {out.parent} does not exist")
    if not 0.05 <= args.budget_scale <= 100:
        raise ValueError(f"--budget-scale must be in [0.05, 100]; got {args.budget_scale}")
    device = str(args.device)
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"--device must be cpu, cuda or cuda:<index>; got {device!r}")
    config = tiny_config(device) if args.tiny else GpuCheckConfig(device=device)
    config = replace(config, compile=args.compile,
                     budgets={k: v * args.budget_scale for k, v in config.budgets.items()})
    report = run_gpu_check(config, parts=args.parts or PARTS,
                           progress=lambda m: print(f"[gpu-check] {m}", file=sys.stderr, flush=True))
    atomic_write_bytes(out, json.dumps(report, indent=2).encode("utf-8"), replace=False)
    print(f"[gpu-check] wrote {out}", file=sys.stderr)
    return 0
