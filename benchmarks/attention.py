"""Benchmark: full softmax attention vs ReHyAt (parallel and recurrent forms) on CPU.

Shapes follow Wan2.1-1.3B: batch 1, 12 heads × 128, 600 tokens per latent frame (320×480 video),
chunks of Tc=3 frames with To=1 overlap frame, the paper-sized feature maps (``FeatureMapPair(12,
128)`` with the default :class:`~rehyat.config.FeatureMapConfig`), fp32, ``torch.inference_mode``.

Two sweeps, one JSON document on stdout (progress goes to stderr):

- **timing** (one process): per number of latent frames and per case, one FLOP-counted forward
  (``torch.utils.flop_counter.FlopCounterMode``; it doubles as the warm-up) and the median wall time
  of ``--repeats`` further forwards, run round-robin over the cases (the order reversed every other
  round) so that machine noise hits them alike. Derived: speed-ups over softmax, FLOP ratios, and
  ``efficiency = speedup / flop_ratio`` — the fraction of ReHyAt's FLOP saving that turns into
  wall-clock saving (target ≥ 0.8). Two estimates: from the medians of each case, and ``paired_*``,
  the median over rounds of each round's own softmax/ReHyAt time ratio. The paired one is the
  verdict (``meets_target``): a shared machine drifts by tens of percent over minutes, and a
  round's cases run back to back, so its ratio compares like with like.
- **memory** (one fresh subprocess per case and size): working memory beyond the inputs and the
  output, from the peak resident set size (see :data:`MEMORY_METHOD`).

FLOPs are reported three ways: ``counted`` (what the counter saw), ``analytic`` (the minimal count
of :mod:`rehyat.flops`) and ``predicted`` — the analytic count plus the work the implementation does
beyond the minimum (:func:`implementation_extra_flops`); ``predicted == counted`` exactly.

Usage::

    python benchmarks/attention.py --out /tmp/bench_attention.json
    python benchmarks/attention.py --quick --repeats 1          # seconds-long smoke run
    python benchmarks/attention.py --pool run1.json run2.json   # pool saved runs' rounds
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.attention_bench.config import QUICK, REHYAT_CASES, BenchConfig, log  # noqa: E402
from benchmarks.attention_bench.memory import MEMORY_METHOD, measure_memory, memory_sweep  # noqa: E402
from benchmarks.attention_bench.report import machine_info, summarize, write_json_atomic  # noqa: E402
from benchmarks.attention_bench.timing import pool_timing, profile_case, timing_sweep  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """CLI; size options default to None so that ``--quick`` and explicit values can combine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", help="timing sizes (latent frames)")
    parser.add_argument("--memory-frames", type=int, nargs="+", help="memory sizes (latent frames)")
    parser.add_argument("--softmax-memory-max-frames", type=int, help="largest softmax memory size")
    parser.add_argument("--repeats", type=int, help="timed forwards per case (median reported)")
    parser.add_argument("--memory-repeats", type=int,
                        help="memory subprocesses per ReHyAt point (median reported; softmax: 1)")
    parser.add_argument("--tokens-per-frame", type=int, help="P, tokens per latent frame")
    parser.add_argument("--heads", type=int, help="attention heads")
    parser.add_argument("--head-dim", type=int, help="per-head width d")
    parser.add_argument("--seed", type=int, help="seed of inputs and feature maps")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one parallel and one recurrent call at the first --frames")
    parser.add_argument("--out", type=Path, help="also write the JSON here (atomically)")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="REPORT",
                        help="measure nothing: pool the timing rounds of these reports (runs of one "
                             "workload) and print the pooled timing and summary")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one memory measurement
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Defaults (Wan2.1-1.3B or ``--quick``) overridden by explicit options."""
    cfg = replace(BenchConfig(), **QUICK) if args.quick else BenchConfig()
    overrides = {
        "frames": tuple(args.frames) if args.frames else None,
        "memory_frames": tuple(args.memory_frames) if args.memory_frames else None,
        "softmax_memory_max_frames": args.softmax_memory_max_frames, "repeats": args.repeats,
        "memory_repeats": args.memory_repeats,
        "tokens_per_frame": args.tokens_per_frame, "heads": args.heads, "head_dim": args.head_dim,
        "seed": args.seed,
    }
    cfg = replace(cfg, **{key: value for key, value in overrides.items() if value is not None})
    if min(cfg.repeats, cfg.memory_repeats) < 1 or min(cfg.frames + cfg.memory_frames, default=1) < 1:
        raise SystemExit("--repeats, --memory-repeats and every frame count must be ≥ 1")
    return cfg


def child_main(request: str) -> int:
    """Entry of a memory subprocess: print one JSON line with :func:`measure_memory`'s result."""
    spec = json.loads(request)
    cfg = BenchConfig.from_dict(spec["config"])
    print(json.dumps(measure_memory(cfg, spec["case"], int(spec["frames"]))), flush=True)
    return 0


def pool_main(paths: Sequence[Path], out: Path | None) -> int:
    """``--pool``: print (and optionally write) the pooled timing of saved reports."""
    try:
        reports = [json.loads(Path(path).read_text()) for path in paths]
        timing = pool_timing(reports)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"--pool: {error}") from error
    report = {"pooled_from": [str(path) for path in paths], "config": reports[0]["config"],
              "timing": timing, "summary": summarize(timing, [])}
    print(json.dumps(report, indent=2), flush=True)
    if out:
        write_json_atomic(out, report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sweeps and print (and optionally write) the JSON report."""
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.pool:
        return pool_main(args.pool, args.out)
    cfg = config_from_args(args)
    log(f"config: {json.dumps(cfg.to_dict())}")
    timing = [] if args.skip_timing else timing_sweep(cfg)
    memory = [] if args.skip_memory else memory_sweep(cfg)
    report: dict[str, Any] = {
        "config": {**cfg.to_dict(), "grad_mode": "inference_mode", "causal": True,
                   "warmup": "the FLOP-counted forward of each case is its warm-up"},
        "timing": timing,
        "memory": memory,
        "memory_method": MEMORY_METHOD,
        "summary": summarize(timing, memory),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine_info(),
    }
    if args.profile and cfg.frames:
        report["profile"] = {
            "frames": cfg.frames[0],
            **{case: profile_case(cfg, case, cfg.frames[0]) for case in REHYAT_CASES},
        }
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if args.out:
        write_json_atomic(args.out, report)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
