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
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from rehyat.config import FeatureMapConfig  # noqa: E402
from rehyat.feature_maps import FeatureMapPair  # noqa: E402
from rehyat.flops import (  # noqa: E402
    register_cpu_flash_flop_formula,
    rehyat_attention_flops,
    softmax_attention_flops,
)
from rehyat.ops import rehyat_attention  # noqa: E402

CASES = ("softmax", "parallel", "recurrent")
REHYAT_CASES = ("parallel", "recurrent")
EFFICIENCY_TARGET = 0.8
MEMORY_SPREAD_TARGET = 0.10
MIB = 1024 * 1024

MEMORY_METHOD = (
    "Each (case, frames) runs in a fresh subprocess under torch.inference_mode. The child builds "
    "the feature maps, runs the op once on a tiny problem (same heads/width, 4 tokens per frame) so "
    "that thread pools and kernels are initialised, allocates q, k, v and a dummy tensor the size "
    "of the output with every page touched. It then resets the peak-RSS counter (writes 5 to "
    "/proc/self/clear_refs, so VmHWM := current RSS) and takes baseline = VmHWM (inputs + an "
    "output-sized buffer + library state), frees the dummy, runs the op once, and takes peak = VmHWM "
    "from /proc/self/status. working_mib = peak - baseline: memory the op needs beyond its inputs and "
    "its output (the output's pages are already counted in the baseline). VmHWM is a high-water "
    "mark, so working_mib >= 0. Not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's "
    "peak RSS (inherited at exec), so it would report the benchmark parent's peak, not the child's; "
    "ru_maxrss_mib is recorded for reference only. Children run with glibc's mmap threshold pinned "
    "(MALLOC_MMAP_THRESHOLD_=131072): blocks above 128 KiB are mapped and unmapped on free instead of "
    "being cached in the heap, so RSS follows the tensors the op keeps alive rather than allocator "
    "fragmentation."
)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one benchmark run (serialised into the JSON's ``config``)."""

    batch: int = 1
    heads: int = 12
    head_dim: int = 128
    tokens_per_frame: int = 600
    chunk_frames: int = 3
    overlap_frames: int = 1
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    frames: tuple[int, ...] = (21, 31, 41)
    memory_frames: tuple[int, ...] = (21, 41, 81, 161)
    softmax_memory_max_frames: int = 81
    memory_repeats: int = 3
    repeats: int = 3
    seed: int = 0
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["frames"] = list(self.frames)
        data["memory_frames"] = list(self.memory_frames)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["feature_map"] = FeatureMapConfig.from_dict(data["feature_map"])
        data["frames"] = tuple(data["frames"])
        data["memory_frames"] = tuple(data["memory_frames"])
        return cls(**data)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor dtype of q, k, v."""
        return getattr(torch, self.dtype)


QUICK = {
    "heads": 4, "head_dim": 32, "tokens_per_frame": 16, "frames": (6, 9),
    "memory_frames": (6, 12), "memory_repeats": 1,
    "feature_map": FeatureMapConfig(hidden_dim=32, feature_dim=32),
}


# ---------------------------------------------------------------------------------------------
# Inputs and cases
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_inputs(cfg: BenchConfig, frames: int, tokens_per_frame: int | None = None) -> tuple[Tensor, ...]:
    """Seeded standard-normal ``q, k, v`` of shape ``(B, H, frames·P, d)``."""
    p = tokens_per_frame or cfg.tokens_per_frame
    gen = torch.Generator().manual_seed(cfg.seed + frames)
    shape = (cfg.batch, cfg.heads, frames * p, cfg.head_dim)
    return tuple(torch.randn(shape, generator=gen, dtype=cfg.torch_dtype) for _ in range(3))


def make_feature_maps(cfg: BenchConfig) -> FeatureMapPair:
    """The φq / φk pair at its default (seeded) initialisation, in eval mode."""
    torch.manual_seed(cfg.seed)
    return FeatureMapPair(cfg.heads, cfg.head_dim, cfg.feature_map).eval()


AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def build_case(case: str, cfg: BenchConfig, maps: FeatureMapPair,
               tokens_per_frame: int | None = None) -> AttentionFn:
    """``fn(q, k, v) -> out`` for ``case`` in :data:`CASES`."""
    if case == "softmax":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    if case not in REHYAT_CASES:
        raise ValueError(f"case must be one of {CASES}; got {case!r}")
    kwargs = dict(
        phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=tokens_per_frame or cfg.tokens_per_frame,
        chunk_frames=cfg.chunk_frames, overlap_frames=cfg.overlap_frames, causal=True, mode=case,
    )
    return lambda q, k, v: rehyat_attention(q, k, v, **kwargs)


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def analytic_flops(case: str, cfg: BenchConfig, frames: int) -> int:
    """Minimal forward FLOPs of ``case`` (matmuls, 2 per multiply-add) from :mod:`rehyat.flops`."""
    if case == "softmax":
        return softmax_attention_flops(cfg.batch, cfg.heads, frames * cfg.tokens_per_frame, cfg.head_dim)
    return rehyat_attention_flops(
        cfg.batch, cfg.heads, frames, cfg.tokens_per_frame, cfg.head_dim,
        chunk_frames=cfg.chunk_frames, overlap_frames=cfg.overlap_frames, feature_map=cfg.feature_map,
    ).total


def implementation_extra_flops(case: str, cfg: BenchConfig, frames: int) -> int:
    """Matmul FLOPs the current ``rehyat.ops`` code performs beyond :func:`analytic_flops`.

    Tied to the implementation on purpose: ``analytic + extra`` must equal the counted FLOPs
    exactly, so a change in what the op computes shows up here (and in the smoke test). Today
    every form does exactly the analytic work: the parallel form reads φq only for chunks with a
    linear set and absorbs keys only up to the last window start; the recurrent form skips
    absorbing its last chunk unless ``output_final_state`` asks for the final state.
    """
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}; got {case!r}")
    return 0


def count_flops(fn: AttentionFn, q: Tensor, k: Tensor, v: Tensor) -> tuple[int, dict[str, int]]:
    """Run ``fn`` once under ``FlopCounterMode``: total FLOPs and FLOPs per aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(q, k, v)
    del out
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


# ---------------------------------------------------------------------------------------------
# Timing sweep
# ---------------------------------------------------------------------------------------------


def time_once(fn: AttentionFn, q: Tensor, k: Tensor, v: Tensor) -> float:
    """Wall time in seconds of one forward (the output is freed before returning)."""
    start = time.perf_counter()
    out = fn(q, k, v)
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def time_frames(cfg: BenchConfig, maps: FeatureMapPair, frames: int) -> dict[str, Any]:
    """All cases at one size: counted forward (= warm-up), then ``repeats`` rounds of timings."""
    q, k, v = make_inputs(cfg, frames)
    fns = {case: build_case(case, cfg, maps) for case in CASES}
    cases: dict[str, dict[str, Any]] = {}
    for case, fn in fns.items():
        log(f"frames={frames} {case}: FLOP-counted warm-up")
        counted, per_op = count_flops(fn, q, k, v)
        analytic = analytic_flops(case, cfg, frames)
        cases[case] = {
            "counted_flops": counted, "analytic_flops": analytic,
            "predicted_flops": analytic + implementation_extra_flops(case, cfg, frames),
            "flops_by_op": per_op, "times_s": [],
        }
    for round_ in range(cfg.repeats):
        # Alternate the order so that no case always runs first (right after the previous size).
        order = list(fns) if round_ % 2 == 0 else list(reversed(fns))
        for case in order:
            elapsed = time_once(fns[case], q, k, v)
            cases[case]["times_s"].append(elapsed)
            log(f"frames={frames} {case}: round {round_ + 1}/{cfg.repeats} {elapsed:.3f} s")
    for entry in cases.values():
        entry["median_s"] = statistics.median(entry["times_s"])
        entry["gflops_per_s"] = entry["counted_flops"] / entry["median_s"] / 1e9
    return {"frames": frames, "tokens": frames * cfg.tokens_per_frame, "cases": cases,
            **derived_metrics(cases)}


def derived_metrics(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Speed-ups, FLOP ratios and efficiencies of both ReHyAt forms against softmax."""
    soft = cases["softmax"]
    out: dict[str, Any] = {}
    for form in REHYAT_CASES:
        speedup = soft["median_s"] / cases[form]["median_s"]
        pairs = zip(soft["times_s"], cases[form]["times_s"], strict=True)
        paired = statistics.median(t_soft / t_form for t_soft, t_form in pairs)
        ratio = soft["counted_flops"] / cases[form]["counted_flops"]
        ratio_analytic = soft["analytic_flops"] / cases[form]["analytic_flops"]
        out[f"speedup_{form}"] = speedup
        out[f"paired_speedup_{form}"] = paired
        out[f"flop_ratio_{form}"] = ratio
        out[f"efficiency_{form}"] = speedup / ratio
        out[f"paired_efficiency_{form}"] = paired / ratio
        out[f"flop_ratio_analytic_{form}"] = ratio_analytic
        out[f"efficiency_analytic_{form}"] = speedup / ratio_analytic
    out["flop_ratio"] = out["flop_ratio_parallel"]
    out["efficiency"] = out["efficiency_parallel"]
    out["meets_target"] = out["paired_efficiency_parallel"] >= EFFICIENCY_TARGET
    out["meets_target_recurrent"] = out["paired_efficiency_recurrent"] >= EFFICIENCY_TARGET
    return out


def timing_sweep(cfg: BenchConfig) -> list[dict[str, Any]]:
    """:func:`time_frames` for every size in ``cfg.frames``."""
    register_cpu_flash_flop_formula()
    maps = make_feature_maps(cfg)
    with torch.inference_mode():
        return [time_frames(cfg, maps, frames) for frames in cfg.frames]


# Config fields that define the timed workload: runs pooled together must agree on all of them.
WORKLOAD_FIELDS = ("batch", "heads", "head_dim", "tokens_per_frame", "chunk_frames", "overlap_frames",
                   "feature_map", "seed", "dtype")


def pool_timing(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timing rows of several runs of one workload pooled: their rounds concatenated per size.

    Medians, speed-ups and efficiencies are recomputed over all rounds (paired ratios stay within
    their round). Only sizes present in every report are kept. Raises ValueError when the reports
    time different workloads or count different FLOPs.
    """
    if not reports:
        raise ValueError("pooling needs at least one report")
    base = reports[0]["config"]
    for index, other in enumerate(reports[1:], start=2):
        differ = [key for key in WORKLOAD_FIELDS if other["config"].get(key) != base.get(key)]
        if differ:
            raise ValueError(f"report {index} times another workload (config {differ} differ); "
                             "only runs of one workload can be pooled")
    sizes = [{row["frames"]: row for row in report["timing"]} for report in reports]
    common = sorted(set.intersection(*(set(rows) for rows in sizes)))
    pooled = []
    for frames in common:
        rows = [by_frames[frames] for by_frames in sizes]
        cases: dict[str, dict[str, Any]] = {}
        for case in CASES:
            entries = [row["cases"][case] for row in rows]
            first = entries[0]
            if any(e["counted_flops"] != first["counted_flops"] for e in entries):
                raise ValueError(f"reports count different FLOPs for {case} at {frames} frames "
                                 "(different op code?); they cannot be pooled")
            times = [t for e in entries for t in e["times_s"]]
            median = statistics.median(times)
            cases[case] = {
                **{key: first[key] for key in ("counted_flops", "analytic_flops", "predicted_flops",
                                               "flops_by_op")},
                "times_s": times, "median_s": median, "gflops_per_s": first["counted_flops"] / median / 1e9,
            }
        pooled.append({"frames": frames, "tokens": rows[0]["tokens"], "runs": len(rows), "cases": cases,
                       **derived_metrics(cases)})
    return pooled


# ---------------------------------------------------------------------------------------------
# Memory sweep (one subprocess per measurement)
# ---------------------------------------------------------------------------------------------


def ru_maxrss_mib() -> float:
    """``ru_maxrss`` of this process (KiB on Linux); includes the parent's peak, see MEMORY_METHOD."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field_name: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MiB; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (VmHWM); ``ru_maxrss`` as a fallback."""
    hwm = _proc_status_mib("VmHWM")
    return hwm if hwm is not None else ru_maxrss_mib()


def measure_memory(cfg: BenchConfig, case: str, frames: int) -> dict[str, Any]:
    """The child's measurement (see :data:`MEMORY_METHOD`); call in a fresh process."""
    maps = make_feature_maps(cfg)
    with torch.inference_mode():
        warm_p = min(cfg.tokens_per_frame, 4)
        warm_frames = cfg.chunk_frames + cfg.overlap_frames + 1  # exercises the linear path
        build_case(case, cfg, maps, warm_p)(*make_inputs(cfg, warm_frames, warm_p))
        fn = build_case(case, cfg, maps)
        q, k, v = make_inputs(cfg, frames)
        dummy = torch.empty_like(q).fill_(1.0)  # output-sized, every page touched
        reset = reset_peak_rss()
        baseline = peak_rss_mib()
        del dummy
        start = time.perf_counter()
        out = fn(q, k, v)
        elapsed = time.perf_counter() - start
        peak = peak_rss_mib()
    tensor_mib = q.numel() * q.element_size() / MIB
    del out
    return {
        "case": case, "frames": frames, "tokens": frames * cfg.tokens_per_frame,
        "working_mib": peak - baseline, "peak_rss_mib": peak, "baseline_mib": baseline,
        "input_mib": 3 * tensor_mib, "output_mib": tensor_mib, "time_s": elapsed,
        "peak_source": "VmHWM" if reset and _proc_status_mib("VmHWM") is not None else "ru_maxrss",
        "ru_maxrss_mib": ru_maxrss_mib(),
    }


def run_memory_child(cfg: BenchConfig, case: str, frames: int) -> dict[str, Any]:
    """Run :func:`measure_memory` in a fresh interpreter and return its JSON result."""
    request = json.dumps({"config": cfg.to_dict(), "case": case, "frames": frames})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", request]
    env = {**os.environ, **CHILD_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {case}@{frames} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_plan(cfg: BenchConfig) -> list[tuple[str, int]]:
    """(case, frames) pairs to measure; softmax only up to ``softmax_memory_max_frames``."""
    plan = []
    for case in CASES:
        for frames in cfg.memory_frames:
            if case == "softmax" and frames > cfg.softmax_memory_max_frames:
                continue
            plan.append((case, frames))
    return plan


def memory_sweep(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Per (case, frames) of :func:`memory_plan`: the median of ``memory_repeats`` subprocesses.

    ReHyAt cases take a few seconds per run and are repeated (glibc's heap heuristics make single
    runs wobble by ~10-20 MiB now and then); softmax runs once (minutes per run, tiny and stable
    working memory). The reported entry is the run with the median ``working_mib``; every run's
    value is kept in ``working_mib_samples``.
    """
    results = []
    for case, frames in memory_plan(cfg):
        runs = 1 if case == "softmax" else cfg.memory_repeats
        samples = []
        for run in range(runs):
            log(f"memory {case} frames={frames}: subprocess {run + 1}/{runs}")
            samples.append(run_memory_child(cfg, case, frames))
        samples.sort(key=lambda e: e["working_mib"])
        entry = {**samples[(len(samples) - 1) // 2],
                 "working_mib_samples": [e["working_mib"] for e in samples]}
        log(f"memory {case} frames={frames}: working {entry['working_mib']:.1f} MiB "
            f"(samples {[round(w, 1) for w in entry['working_mib_samples']]}, "
            f"peak {entry['peak_rss_mib']:.0f}, baseline {entry['baseline_mib']:.0f})")
        results.append(entry)
    return results


# ---------------------------------------------------------------------------------------------
# Summary, output, CLI
# ---------------------------------------------------------------------------------------------


def relative_spread(values: Sequence[float]) -> float | None:
    """``(max − min) / min``; None for fewer than two values or a non-positive minimum."""
    if len(values) < 2 or min(values) <= 0:
        return None
    return (max(values) - min(values)) / min(values)


def growth_factor(entries: Sequence[dict[str, Any]]) -> float | None:
    """Working memory at the largest size over that at the smallest (None if undefined)."""
    if len(entries) < 2:
        return None
    ordered = sorted(entries, key=lambda e: e["frames"])
    first, last = ordered[0]["working_mib"], ordered[-1]["working_mib"]
    return last / first if first > 0 else None


def summarize(timing: list[dict[str, Any]], memory: list[dict[str, Any]]) -> dict[str, Any]:
    """Compact tables and pass/fail flags for the timing and memory targets."""
    table = [
        {
            "frames": row["frames"], "tokens": row["tokens"],
            **{f"t_{case}_s": row["cases"][case]["median_s"] for case in CASES},
            **{f"gflops_per_s_{case}": row["cases"][case]["gflops_per_s"] for case in CASES},
            **{key: row[key] for key in (
                "speedup_parallel", "speedup_recurrent", "flop_ratio_parallel",
                "flop_ratio_recurrent", "efficiency_parallel", "efficiency_recurrent",
                "paired_efficiency_parallel", "paired_efficiency_recurrent",
                "meets_target", "meets_target_recurrent",
            )},
        }
        for row in timing
    ]
    by_case = {case: [e for e in memory if e["case"] == case] for case in CASES}
    spread = relative_spread([e["working_mib"] for e in by_case["recurrent"]])
    return {
        "efficiency_target": EFFICIENCY_TARGET,
        "timing": table,
        "all_meet_efficiency_target": bool(table) and all(r["meets_target"] for r in table),
        "memory": {
            case: {e["frames"]: round(e["working_mib"], 1) for e in entries}
            for case, entries in by_case.items()
        },
        "recurrent_working_spread": spread,
        "recurrent_spread_target": MEMORY_SPREAD_TARGET,
        "recurrent_memory_flat": spread is not None and spread <= MEMORY_SPREAD_TARGET,
        "softmax_growth_factor": growth_factor(by_case["softmax"]),
        "parallel_growth_factor": growth_factor(by_case["parallel"]),
        "recurrent_growth_factor": growth_factor(by_case["recurrent"]),
    }


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_model": model,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def profile_case(cfg: BenchConfig, case: str, frames: int, top: int = 15) -> list[dict[str, Any]]:
    """Top ``top`` ops by self CPU time of one warm ``case`` forward (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    maps = make_feature_maps(cfg)
    fn = build_case(case, cfg, maps)
    q, k, v = make_inputs(cfg, frames)
    with torch.inference_mode():
        del_out = fn(q, k, v)  # warm-up
        del del_out
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn(q, k, v)
    events = sorted(prof.key_averages(group_by_input_shape=True),
                    key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
         "self_pct": 100 * e.self_cpu_time_total / total, "input_shapes": str(e.input_shapes)}
        for e in events[:top]
    ]


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
