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
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MIB = 2**20
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # every allocation ≥ 128 KiB is its own mmap
STATUS = "status: "  # prefix of the child's progress lines on stderr


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


def measure_lengths_in_child(
    request: dict[str, Any], timeout: float = 1800.0, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run :mod:`rehyat.demo.measure_child` on ``request`` in a fresh process; returns its rows.

    The child's progress lines are passed to ``log`` as they come (no silent minute).
    """
    env = {**os.environ, **CHILD_ENV}
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "rehyat.demo.measure_child"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        errors: list[str] = []
        try:
            assert child.stdin is not None and child.stderr is not None
            child.stdin.write(json.dumps(request))
            child.stdin.close()
            for line in child.stderr:
                if line.startswith(STATUS):
                    if log is not None:
                        log("  " + line[len(STATUS):].rstrip())
                else:
                    errors.append(line)
            code = child.wait()
        finally:
            timer.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        if code != 0:
            raise RuntimeError(f"the time/memory measurement process failed:\n{''.join(errors)[-2000:]}")
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])
