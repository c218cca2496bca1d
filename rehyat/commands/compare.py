"""``python -m rehyat compare`` — softmax vs ReHyAt on a Wan-shaped workload.

Runs on the embedded default (no downloads): Wan2.1-1.3B's attention layout (12 heads × 128),
``--frames`` latent frames of ``--height × --width`` tokens, the paper's Tc=3 / To=1 and its φ
size. Prints a table (or ``--json``) of times, FLOPs, speedup, the parallel-vs-recurrent gap and
the recurrent state's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import HybridAttentionConfig
from ..feature_maps import FeatureMapPair
from ..flops import rehyat_attention_flops, softmax_attention_flops
from ..ops import rehyat_attention

NAME = "compare"
HELP = "softmax vs ReHyAt attention on a Wan-shaped workload"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` options."""
    defaults = HybridAttentionConfig()
    parser.add_argument("--frames", type=int, default=21, help="latent frames (21 = 81 video frames)")
    parser.add_argument("--height", type=int, default=20,
                        help="tokens per frame, vertically (320 px video)")
    parser.add_argument("--width", type=int, default=30,
                        help="tokens per frame, horizontally (480 px video)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads")
    parser.add_argument("--head-dim", type=int, default=128, help="channels per head")
    parser.add_argument("--chunk-frames", type=int, default=defaults.chunk_frames, help="Tc")
    parser.add_argument("--overlap-frames", type=int, default=defaults.overlap_frames, help="To")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per form (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random q, k, v and φ")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print it; a bad option raises ValueError (reported by the CLI)."""
    report = compare(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def compare(args: argparse.Namespace) -> dict:
    """Run softmax, ReHyAt parallel and ReHyAt recurrent on one seeded workload; return the report."""
    for name in ("frames", "height", "width", "heads", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(args, name)}")
    config = HybridAttentionConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames)
    p, frames = args.height * args.width, args.frames
    gen = torch.Generator().manual_seed(args.seed)
    q, k, v = (torch.randn(1, args.heads, frames * p, args.head_dim, generator=gen) for _ in range(3))
    torch.manual_seed(args.seed)
    maps = FeatureMapPair(args.heads, args.head_dim, config.feature_map)
    kw = dict(phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=config.chunk_frames,
              overlap_frames=config.overlap_frames)
    with torch.inference_mode():
        t_soft, _ = _timed(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats)
        t_par, parallel = _timed(lambda: rehyat_attention(q, k, v, mode="parallel", **kw), args.repeats)
        # Warm-up of the recurrent form, and the final state whose size the report gives; the timed
        # runs skip the state (the last chunk is then not absorbed), like the parallel form.
        _, state = rehyat_attention(q, k, v, mode="recurrent", output_final_state=True, **kw)
        t_rec, recurrent = _timed(lambda: rehyat_attention(q, k, v, mode="recurrent", **kw), args.repeats,
                                  warm_up=False)
    flops_soft = softmax_attention_flops(1, args.heads, frames * p, args.head_dim)
    flops_rehyat = rehyat_attention_flops(1, args.heads, frames, p, args.head_dim,
                                          chunk_frames=config.chunk_frames,
                                          overlap_frames=config.overlap_frames,
                                          feature_map=config.feature_map).total
    return {
        "workload": {"frames": frames, "tokens_per_frame": p, "tokens": frames * p, "heads": args.heads,
                     "head_dim": args.head_dim, "chunk_frames": config.chunk_frames,
                     "overlap_frames": config.overlap_frames, "dtype": "float32",
                     "threads": torch.get_num_threads()},
        "seconds": {"softmax": t_soft, "rehyat_parallel": t_par, "rehyat_recurrent": t_rec},
        "gflops": {"softmax": flops_soft / 1e9, "rehyat": flops_rehyat / 1e9},
        "flop_ratio": flops_soft / flops_rehyat,
        "speedup": {"parallel": t_soft / t_par, "recurrent": t_soft / t_rec},
        "max_abs_parallel_vs_recurrent": float((parallel - recurrent).abs().max()),
        "recurrent_state_mib": state.nbytes() / 2**20,
        "feature_map_parameters": sum(prm.numel() for prm in maps.parameters()),
    }


def format_report(report: dict) -> str:
    """Human-readable table of :func:`compare`'s report."""
    w, s = report["workload"], report["seconds"]
    lines = [
        f"ReHyAt vs softmax — {w['frames']} latent frames × {w['tokens_per_frame']} tokens "
        f"= {w['tokens']} tokens, {w['heads']} heads × {w['head_dim']}, Tc={w['chunk_frames']}, "
        f"To={w['overlap_frames']}, fp32, {w['threads']} threads",
        f"{'form':<18}{'seconds':>10}{'GFLOP':>10}{'speedup':>10}",
        f"{'softmax':<18}{s['softmax']:>10.3f}{report['gflops']['softmax']:>10.1f}{1.0:>10.2f}",
        f"{'rehyat parallel':<18}{s['rehyat_parallel']:>10.3f}{report['gflops']['rehyat']:>10.1f}"
        f"{report['speedup']['parallel']:>10.2f}",
        f"{'rehyat recurrent':<18}{s['rehyat_recurrent']:>10.3f}{report['gflops']['rehyat']:>10.1f}"
        f"{report['speedup']['recurrent']:>10.2f}",
        f"FLOP ratio softmax/ReHyAt: {report['flop_ratio']:.2f}×",
        f"max |parallel − recurrent|: {report['max_abs_parallel_vs_recurrent']:.2e}",
        f"recurrent state: {report['recurrent_state_mib']:.2f} MiB (independent of the number of frames)",
        f"φ parameters per block: {report['feature_map_parameters']:,}",
    ]
    return "\n".join(lines)


def _timed(fn: Callable, repeats: int, *, warm_up: bool = True):
    """Median wall time over ``repeats`` runs (after one warm-up run unless told), and the last result."""
    result = fn() if warm_up else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
