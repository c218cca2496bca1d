"""Timing: round-robin wall-clock sweeps, derived speed-ups / efficiencies, pooling runs, profiling."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rehyat.feature_maps import FeatureMapPair
from rehyat.flops import register_cpu_flash_flop_formula

from .cases import (
    AttentionFn,
    analytic_flops,
    build_case,
    count_flops,
    implementation_extra_flops,
    make_feature_maps,
    make_inputs,
)
from .config import CASES, EFFICIENCY_TARGET, REHYAT_CASES, BenchConfig, log


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
