"""The per-part time guard: each part runs in its own process and is stopped at its budget.

A part process prints one JSON object per line: ``{"case": {...}}`` for each finished case (so the
cases finished before a stop are kept) and ``{"skipped": "..."}`` when it gives up by itself (the
parts also check the deadline between cases and skip the rest). A part that outlives its budget is
killed with its process group and recorded as ``status: "skipped"`` — it never hangs the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KILL_GRACE_SECONDS = 5.0


@dataclass
class PartOutcome:
    """What a guarded part produced."""

    status: str  # "ok" | "skipped" | "error"
    seconds: float
    cases: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None


def parse_lines(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The ``case`` objects and the last ``skipped`` reason in a part's stdout (other lines ignored)."""
    cases, skipped = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "case" in item:
            cases.append(item["case"])
        elif "skipped" in item:
            skipped = str(item["skipped"])
    return cases, skipped


def run_guarded(command: Sequence[str], budget_seconds: float, *, env: dict[str, str] | None = None,
                cwd: str | None = None) -> PartOutcome:
    """Run ``command`` for at most ``budget_seconds``; collect its cases (see the module docstring)."""
    start = time.monotonic()
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=budget_seconds)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    seconds = time.monotonic() - start
    cases, skipped = parse_lines(out or "")
    if timed_out:
        return PartOutcome("skipped", seconds, cases, f"time guard: stopped after its budget of "
                                                      f"{budget_seconds:.0f} s ({len(cases)} cases finished)")
    if proc.returncode != 0:
        lines = (err or "").strip().splitlines()
        return PartOutcome("error", seconds, cases, lines[-1] if lines else f"exit code {proc.returncode}")
    if skipped is not None:
        return PartOutcome("skipped", seconds, cases, skipped)
    return PartOutcome("ok", seconds, cases)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the part's process group (SIGTERM, then SIGKILL after a grace period)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Deadline:
    """A part's own deadline (checked between cases so it can finish before the hard stop)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left."""
        return self.end - time.monotonic()

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.remaining() <= 0
