"""Human-readable summary of a distillation report (the JSON written to ``report.json``)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """A table of every block's held-out relative L2 and cosine before and after distillation."""
    held = report["held_out"]
    what = "held-out prompts and seeds" if held["prompts_held_out"] else "held-out seeds (no prompt held out)"
    lines = [
        f"φ distillation: {report['steps']} steps, {report['trajectories']} trajectories "
        f"(global batch {report['global_batch']}, {report['world_size']} process(es)), "
        f"{report['train_seconds']:.1f} s",
        f"attention output vs the softmax teacher on {len(held['trajectories'])} trajectories ({what}):",
        f"{'block':>6} {'rel L2 before':>14} {'rel L2 after':>13} {'cos before':>11} {'cos after':>10}",
    ]
    for block, errors in held["blocks"].items():
        before, after = errors["before"], errors["after"]
        lines.append(
            f"{block:>6} {_num(before['relative_l2']):>14} {_num(after['relative_l2']):>13} "
            f"{_num(before['cosine']):>11} {_num(after['cosine']):>10}"
        )
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
