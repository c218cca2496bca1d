"""Reporting: the summary tables and pass/fail flags, machine facts, atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import CASES, EFFICIENCY_TARGET, MEMORY_SPREAD_TARGET


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
