"""Measured latency (per block and per model evaluation) and peak memory of a :class:`Runner`.

Timing: ``warmup`` untimed evaluations, then ``repeats`` timed ones; the median is reported. On CUDA
with CUDA events around the evaluation and around every block call (forward pre/post hooks; a block
called several times in one evaluation — recurrent form, context windows — is summed); on CPU with
``time.perf_counter``.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (peak) minus
the allocated bytes before the evaluation (working); on CPU the process's resident-set high-water
mark (Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``), peak minus the level before
the evaluation. :func:`measure_in_subprocess` runs each case in a fresh Python process, so the CPU
high-water mark of one case never hides another's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .runners import Runner

MIB = 2**20
# Large blocks go back to the OS on free, so RSS follows the live tensors.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Measurement:
    """What one case measured (seconds are medians over the timed evaluations)."""

    step_seconds: float  # one model evaluation (all windows for context windows)
    block_seconds: list[float]  # per block of the measured model, summed over its calls in one evaluation
    peak_memory_mib: float  # CUDA: peak allocated; CPU: process peak RSS
    working_memory_mib: float  # peak minus the level just before the evaluation
    layers: int  # blocks of the measured model (reduced depth when < the preset's)
    converted: list[int]
    device: str
    memory_method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class _BlockTimer:
    """Forward pre/post hooks timing every call of every block (CUDA events or perf_counter)."""

    def __init__(self, blocks, cuda: bool):
        self.cuda = cuda
        self.totals = [0.0] * len(blocks)
        self._open: dict[int, Any] = {}
        self._events: list[tuple[int, Any, Any]] = []
        self._handles = []
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre(index)))
            self._handles.append(block.register_forward_hook(self._post(index)))

    def _pre(self, index):
        def hook(module, args):
            if self.cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self._open[index] = event
            else:
                self._open[index] = time.perf_counter()
        return hook

    def _post(self, index):
        def hook(module, args, output):
            start = self._open.pop(index)
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events.append((index, start, end))
            else:
                self.totals[index] += time.perf_counter() - start
        return hook

    def collect(self) -> list[float]:
        """Per-block seconds of the calls since the last collect."""
        if self.cuda:
            torch.cuda.synchronize()
            for index, start, end in self._events:
                self.totals[index] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        totals, self.totals = self.totals, [0.0] * len(self.totals)
        return totals

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


def _rss_high_water_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_rss_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_runner(runner: Runner, *, device: str = "cpu", repeats: int = 3, warmup: int = 1) -> Measurement:
    """Time ``runner`` and take its peak memory, in this process (see the module docstring)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be ≥ 1 and warmup ≥ 0; got repeats={repeats}, warmup={warmup}")
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        runner.forward()
    # Memory: one evaluation after resetting the peak.
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        runner.forward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        peak_mib, working_mib = peak / MIB, (peak - before) / MIB
        method = "cuda max_memory_allocated"
    else:
        exact = _reset_rss_high_water()
        before = _rss_mib() or 0.0
        runner.forward()
        peak_mib = _rss_high_water_mib() or 0.0
        working_mib = max(peak_mib - before, 0.0)
        method = ("process VmHWM (reset via clear_refs)" if exact
                  else "process VmHWM (not resettable: lifetime peak)")
    timer = _BlockTimer(runner.blocks, cuda)
    steps, blocks = [], []
    try:
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                runner.forward()
                end.record()
                torch.cuda.synchronize()
                steps.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                runner.forward()
                steps.append(time.perf_counter() - t0)
            blocks.append(timer.collect())
    finally:
        timer.remove()
    per_block = [statistics.median(column) for column in zip(*blocks, strict=True)]
    return Measurement(statistics.median(steps), per_block, peak_mib, working_mib, runner.layers,
                       list(runner.converted), str(device), method)


@dataclass(frozen=True)
class MeasureSpec:
    """Everything a fresh process needs to build and measure one case (JSON round-trip)."""

    shape: dict[str, Any]
    case: dict[str, Any]
    latent: list[int]
    layers: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    threads: int | None = None


def measure_in_subprocess(spec: MeasureSpec, *, timeout: float = 3600.0) -> Measurement:
    """Run :func:`rehyat.profiling.child.main` on ``spec`` in a fresh interpreter; return its result."""
    env = {**os.environ, **CHILD_ENV}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "rehyat.profiling.child", json.dumps(asdict(spec))],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.strip()
        message = stderr.splitlines()[-1] if stderr else f"exit code {proc.returncode}"
        raise RuntimeError(f"measuring {spec.case.get('kind')} failed in its subprocess: {message}")
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))
