"""Memory: working memory of one forward, measured in a fresh subprocess per (case, size)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cases import build_case, make_feature_maps, make_inputs
from .config import CASES, MIB, BenchConfig, log

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "attention.py"
"""The CLI a memory child runs (``--child``)."""

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
    cmd = [sys.executable, str(SCRIPT), "--child", request]
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
