"""The gpu-check run: device info, then each part in its own time-guarded process, then the report.

Report keys (pinned): ``device``, ``op_correct``, ``op_speed``, ``dit``, ``sampler``; plus
``config``, ``tiny``, ``seconds`` and ``not_measured`` (what this run did not measure, in words).
Each part has ``status`` (ok / skipped / error), ``seconds``, ``budget_seconds``, ``reason``,
``cases`` and its summary (op_correct: ``bounds`` and ``pass``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import correctness, dit, sampler, speed
from .config import PARTS, GpuCheckConfig
from .device import device_info
from .guard import PartOutcome, run_guarded

SUMMARIES = {"op_correct": correctness.summarise, "op_speed": speed.summarise, "dit": dit.summarise,
             "sampler": sampler.summarise}
COOPERATIVE_SHARE = 0.85  # a part stops starting new cases after this share of its budget
REPO_ROOT = Path(__file__).resolve().parents[2]


def part_command(part: str, config: GpuCheckConfig, seconds: float) -> list[str] | str:
    """The command of ``part`` (or why it cannot run)."""
    if part == "sampler":
        return sampler.command(config, seconds)
    import json

    return [sys.executable, "-m", "rehyat.gpu_check.child", part, json.dumps(config.to_dict()), str(seconds)]


def run_part(part: str, config: GpuCheckConfig) -> dict[str, Any]:
    """One part under its time guard, with its summary."""
    budget = config.budgets[part]
    cmd = part_command(part, config, budget * COOPERATIVE_SHARE)
    if isinstance(cmd, str):
        outcome = PartOutcome("skipped", 0.0, [], cmd)
    else:
        env = dict(os.environ)
        if part != "sampler":  # the sampler script imports the pack as a package; ComfyUI owns `nodes`
            extra = env.get("PYTHONPATH")
            env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + extra if extra else "")
        outcome = run_guarded(cmd, budget, env=env, cwd=str(REPO_ROOT))
    return {"status": outcome.status, "seconds": outcome.seconds, "budget_seconds": budget,
            "reason": outcome.reason, "cases": outcome.cases, **SUMMARIES[part](outcome.cases)}


def not_measured(config: GpuCheckConfig, report: dict[str, Any]) -> list[str]:
    """What this run did not measure, in words (for the JSON and the README)."""
    notes = []
    if config.device.startswith("cpu"):
        notes.append("no GPU: CUDA events, flash SDPA, bf16 tensor-core kernels, VRAM peaks and pinned "
                     "offload were not exercised; CPU timings and RSS say nothing about a GPU")
    if config.tiny:
        notes.append("--tiny: toy sizes, not Wan shapes; only the structure and the correctness flags mean "
                     "anything")
    if not config.compile:
        notes.append("torch.compile'd φ not timed (run with --compile)")
    notes.append("no fused φ kernel exists: a fused C++ CPU kernel did not pay (benchmarks/README.md); a "
                 "fused GPU kernel (Triton) is not written")
    notes.append("fp8 / GGUF weights not run: dit and sampler use bf16 weights (CPU: fp32)")
    for part in PARTS:
        entry = report.get(part, {})
        if entry.get("status") != "ok":
            notes.append(f"{part}: {entry.get('status')} — {entry.get('reason')}")
        skipped = [c for c in entry.get("cases", []) if "skipped" in c]
        if skipped:
            notes.append(f"{part}: {len(skipped)} case(s) skipped — {skipped[0]['skipped']}")
    return notes


def run_gpu_check(config: GpuCheckConfig, *, parts: tuple[str, ...] = PARTS,
                  progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run the check (``parts`` subset for debugging) and return the report."""
    start = time.monotonic()
    report: dict[str, Any] = {"device": device_info(config.device), "tiny": config.tiny,
                              "config": config.to_dict()}
    for part in PARTS:
        if part not in parts:
            report[part] = {"status": "skipped", "seconds": 0.0, "budget_seconds": config.budgets[part],
                            "reason": "not selected (--parts)", "cases": [], **SUMMARIES[part]([])}
            continue
        progress(f"{part} (budget {config.budgets[part]:.0f} s)")
        report[part] = run_part(part, config)
        progress(f"{part}: {report[part]['status']} in {report[part]['seconds']:.1f} s")
    report["seconds"] = time.monotonic() - start
    report["not_measured"] = not_measured(config, report)
    return report
