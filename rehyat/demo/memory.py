"""Time and peak memory of one call.

CPU: the process's resident-set high-water mark (Linux ``VmHWM``, reset by writing 5 to
``/proc/self/clear_refs``) minus the resident set just before the call. That is only honest in a
process whose large allocations are mmapped from the start (freed tensors go back to the OS instead
of being reused from the heap unseen), so :func:`measure_lengths_in_child` runs the measurements
in a fresh Python process started with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``).
CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the allocation before. Where neither
works (non-Linux CPU) the memory is reported as None.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MIB = 2**20
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # every allocation ≥ 128 KiB is its own mmap


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB → MiB
    except OSError:
        return None
    return None


def _reset_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_call(
    fn: Callable[[], Any], device: torch.device | str = "cpu"
) -> tuple[Any, float, float | None]:
    """Run ``fn()`` once; returns ``(result, seconds, working_memory_mib or None)``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return result, seconds, (torch.cuda.max_memory_allocated(device) - before) / MIB
    reset = _reset_high_water()
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    if not reset or before is None or peak is None:
        return result, seconds, None
    return result, seconds, max(peak - before, 0.0)


def measure_lengths_in_child(request: dict[str, Any], timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Run :mod:`rehyat.demo.measure_child` on ``request`` in a fresh process; returns its rows."""
    env = {**os.environ, **CHILD_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "rehyat.demo.measure_child"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the time/memory measurement process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
