"""The calibrated sections of ``docs/fidelity.md``: attention error, calibration rows, φ seeds, PSNR by
chunk and the shipped student.

Each function returns Markdown lines ending with a blank line, or no lines when the run holds no
such results (a ``fidelity.json`` written before the section existed renders as it did).
"""

from __future__ import annotations

import math
from typing import Any

from ..student.attention_error import ORACLE as ORACLE_ERROR
from ..student.attention_error import WINDOWED
from ..teacher.evaluate import STUDENT_TARGETS
from .attention_section import SHIPPED as SHIPPED_PHI
from .attention_section import UNTRAINED
from .calibration import ORACLE, all_rows
from .calibration import ROWS as CALIBRATION_ORDER
from .shipped import STAGE1, STUDENT


def threads_text(count: object) -> str:
    """``"1 thread"``, ``"2 threads"``; ``"? threads"`` when the count is unknown."""
    if isinstance(count, int) and not isinstance(count, bool):
        return f"{count} thread" + ("" if count == 1 else "s")
    return "? threads"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _cell(record: dict[str, Any], metric: str, kind: str, digits: int = 2) -> str:
    entry = record.get("summary", {}).get(kind, {}).get(metric)
    if entry is None or entry.get("mean") is None:
        return "–"
    sem = "" if entry.get("sem") is None else f" ± {entry['sem']:.{digits}f}"
    return f"{entry['mean']:.{digits}f}{sem}"


def _label(record: dict[str, Any]) -> str:
    return record.get("case", {}).get("label", "?")


# --- calibration ------------------------------------------------------------------------------------


def calibration_section(summary: dict[str, Any]) -> list[str]:
    """Floor, black, static mean, noise ceiling and oracle rows, and every row's share of the range."""
    calibration = summary.get("calibration")
    if not calibration:
        return []
    short, long = summary["training_frames"], summary["long_frames"]
    shares = summary.get("range_shares", {})
    floor, ceiling = shares.get("floor", {}), shares.get("ceiling", {})
    noise = summary.get("section_settings", {}).get("ceiling_noise", 1e-3)
    lines = [
        "## Calibration: floor, ceiling and the block-causal oracle",
        "",
        "What a PSNR to the teacher's clip means on this teacher, from rows that need no training:",
        "",
        "- **floor** — the teacher itself from another noise seed (same prompt): a clip of the right "
        "content that is not *this* clip. A model below it reproduces the teacher's clip no better than a "
        "fresh sample;",
        "- **all-black clip** — the background alone; **static mean frame** — per clip, the teacher clip's "
        "mean over time on every frame (the right colours where they are on average, no motion);",
        f"- **ceiling** — the teacher with {noise:g} relative noise on every DiT weight "
        f"(``w·(1 + {noise:g}·n)``, n ~ N(0, 1), one seed): a numerically negligible change whose "
        "effect the sampler amplifies over its steps. Chosen over a bf16 re-run because it is "
        "deterministic on every CPU and keeps the fp32 numerics of the other rows; no converted model is "
        "expected above it;",
        "- **block-causal softmax oracle** — the teacher with exact softmax over every frame up to the end "
        "of the query's chunk (Tc of the headline case) in every block, no training: what a chunk-causal "
        "student with a perfect φ would generate. The gap from the teacher to it is the cost of causality, "
        "which no φ can recover (stage 2 can).",
        "",
        f"**Share of range** = (PSNR − floor) / (ceiling − floor) of the mean PSNR: floor "
        f"{_fmt(floor.get('short'))} dB, ceiling {_fmt(ceiling.get('short'))} dB at {short} frames; "
        f"{_fmt(floor.get('long'))} dB and {_fmt(ceiling.get('long'))} dB at {long}. "
        "0 = no closer to the teacher's clip than another seed of the teacher; 1 = as close as the ceiling.",
        "",
        f"| row | PSNR {short} f (dB) | share of range {short} f | PSNR {long} f (dB) | "
        f"share of range {long} f | cosine {short} f | seam ratio |",
        "|" + "---|" * 7,
    ]
    rows = all_rows(summary)
    order = [n for n in CALIBRATION_ORDER if n in calibration] + [n for n in rows if n not in calibration]
    per_row = shares.get("rows", {})
    for name in order:
        record, share = rows[name], per_row.get(name, {})
        lines.append(
            f"| {_label(record)} | {_cell(record, 'psnr_db', 'short')} | {_pct(share.get('short'))} | "
            f"{_cell(record, 'psnr_db', 'long')} | {_pct(share.get('long'))} | "
            f"{_cell(record, 'cosine', 'short', 3)} | {_cell(record, 'seam_ratio', 'short')} |"
        )
    return lines + [""]


# --- φ seeds ----------------------------------------------------------------------------------------


def seeds_section(summary: dict[str, Any]) -> list[str]:
    """The headline case's φ seeds and how their spread enters the intervals."""
    seeds = summary.get("phi_seeds")
    if not seeds:
        return []
    short, long = summary["training_frames"], summary["long_frames"]
    headline = summary["cases"].get(seeds.get("case", "rehyat"))
    records = ([("0", headline)] if headline else []) + [
        (str(r["case"].get("phi_seed", "?")), r) for r in seeds.get("runs", {}).values()
    ]
    lines = [
        "## Training noise: φ seeds of the headline case",
        "",
        f"The headline case ({_label(headline) if headline else '?'}) distilled with the same budget and "
        "prompts from each φ initialisation seed, generating the same held-out clips. The spread is the "
        "noise of φ's initialisation (prompts and their order are the same for every seed); other cases, "
        "the fine-tuned one included, are assumed to carry training noise of the same size.",
        "",
        f"| φ seed | PSNR {short} f (dB) | PSNR {long} f (dB) | cosine {short} f |",
        "|---|---|---|---|",
    ]
    for seed, record in records:
        lines.append(
            f"| {seed} | {_cell(record, 'psnr_db', 'short')} | {_cell(record, 'psnr_db', 'long')} | "
            f"{_cell(record, 'cosine', 'short', 3)} |"
        )
    spread = seeds.get("spread", {})
    sd_short = (spread.get("short", {}).get("psnr_db") or {}).get("sd")
    sd_long = (spread.get("long", {}).get("psnr_db") or {}).get("sd")
    lines.append("")
    if sd_short is None:
        lines.append(
            f"With {len(records)} seed(s) there is no seed-to-seed spread: the intervals below hold clip "
            "sampling only, not training noise (run with `--phi-seeds 3` or more)."
        )
    else:
        few = " (fewer than the 3 seeds the docs call for)" if len(records) < 3 else ""
        lines.append(
            f"Seed-to-seed standard deviation of the mean PSNR: **{_fmt(sd_short)} dB** at {short} frames, "
            f"{_fmt(sd_long)} dB at {long}, over {len(records)} seeds{few}. Every paired interval in "
            "*Against the paper* that involves a trained case adds this variance once per trained side "
            "(each case is one training run) to the clips' variance before it is called significant."
        )
    return lines + [""]


# --- attention error --------------------------------------------------------------------------------


def attention_error_section(summary: dict[str, Any]) -> list[str]:
    """Per-block relative L2 of the headline φ (every seed), the references, and the gap closed."""
    errors = summary.get("attention_error")
    if not errors:
        return []
    cases, gap = errors["cases"], errors.get("gap_closed", {})
    seeds = errors.get("seeds", [])
    columns = [c for c in (UNTRAINED, WINDOWED, *seeds, SHIPPED_PHI, ORACLE_ERROR) if c in cases]
    blocks = sorted({int(b) for c in columns for b in cases[c]["blocks"]})
    settings = summary.get("settings", {})
    lines = [
        "## Per-block attention error (the primary stage-1 evidence)",
        "",
        f"Relative L2 ``sqrt(Σ‖y − ŷ‖² / Σ‖y‖²)`` of each block's self-attention output against the "
        f"teacher's softmax, pooled over every denoising step of {errors['trajectories']} held-out teacher "
        f"trajectories ({errors.get('forwards_per_trajectory', '?')} Euler steps each, both guidance rows; "
        "scenes no distillation prompt shows). *Windowed softmax* is ReHyAt's softmax part alone (no linear "
        "part); the *block-causal oracle* is exact softmax up to the chunk's end — the best any causal φ can "
        f"reach. The seeds' φ were distilled for {settings.get('distill_steps', '?')} steps (the table's "
        "budget); the shipped stage-1 φ has its own (see *The shipped student*). *Gap closed* = "
        "(e_window − e_φ) / (e_window − e_oracle), averaged over blocks.",
        "",
        "| block | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for b in blocks:
        lines.append(
            f"| {b} | " + " | ".join(_fmt(cases[c]["blocks"].get(str(b)), 3) for c in columns) + " |"
        )
    lines.append("| mean | " + " | ".join(_fmt(cases[c].get("mean"), 3) for c in columns) + " |")
    lines.append(
        "| gap closed | " + " | ".join(_pct(gap.get(c)) if c in gap else "–" for c in columns) + " |"
    )
    lines.append("")
    over = errors.get("gap_closed_over_seeds", {})
    target = errors.get("gap_target", 0.6)
    if over.get("mean") is not None:
        sd = "" if over.get("sd") is None else f" ± {100 * over['sd']:.0f} (SD)"
        met = over["mean"] >= target
        verdict = "met" if met else f"not met, short by {100 * (target - over['mean']):.0f} points"
        lines.append(
            f"Gap closed by the headline φ over {over['n']} φ seed(s): **{100 * over['mean']:.0f}%{sd}** "
            f"(target ≥ {100 * target:.0f}%: {verdict})."
        )
    for name, reason in errors.get("skipped", {}).items():
        lines.append(f"- {name}: not included — {reason}.")
    return lines + [""]


# --- PSNR by chunk ----------------------------------------------------------------------------------


def _chunk_columns(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = all_rows(summary)
    names = [summary.get("headline", "rehyat"), ORACLE, STAGE1, STUDENT]
    return [(n, rows[n]) for n in names if n in rows and rows[n].get("chunks")]


def _chunk_stats(values: list[list[float | None]], index: int) -> str:
    finite = [row[index] for row in values if index < len(row) and row[index] is not None]
    if not finite:
        return "–"
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return f"{mean:.2f}"
    sem = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) / len(finite))
    return f"{mean:.2f} ± {sem:.2f}"


def chunk_section(summary: dict[str, Any]) -> list[str]:
    """PSNR to the teacher per chunk index, for the headline case, the oracle and the shipped student."""
    columns = _chunk_columns(summary)
    if not columns:
        return []
    lines = [
        "## PSNR by chunk",
        "",
        "PSNR to the teacher's clip of each chunk of Tc frames (mean ± standard error over clips). The "
        "first chunk sees no later frame in a causal model while the teacher's first frames attend to the "
        "whole clip: the first chunk carries the causality loss. Chunk 0 is the same for every causal model "
        "without a fine-tune (oracle, ReHyAt, stage-1 φ: nothing earlier to attend to, exact softmax within "
        "the chunk), so its gap to the teacher is the pure cost of causality; only stage 2 can move it.",
        "",
    ]
    for kind, frames in (("short", summary["training_frames"]), ("long", summary["long_frames"])):
        tables = [(n, r) for n, r in columns if r["chunks"].get(kind)]
        if not tables:
            continue
        tc = tables[0][1]["chunks"]["chunk_frames"]
        tables = [(n, r) for n, r in tables if r["chunks"]["chunk_frames"] == tc]
        count = max(len(row) for _, r in tables for row in r["chunks"][kind])
        lines += [
            f"**{frames}-frame clips** (Tc = {tc}):",
            "",
            "| chunk (frames) | " + " | ".join(_label(r) for _, r in tables) + " |",
            "|" + "---|" * (len(tables) + 1),
        ]
        for index in range(count):
            first, last = index * tc, min((index + 1) * tc, frames) - 1
            lines.append(
                f"| {index} ({first}–{last}) | "
                + " | ".join(_chunk_stats(r["chunks"][kind], index) for _, r in tables)
                + " |"
            )
        lines.append("")
    return lines


# --- shipped student --------------------------------------------------------------------------------


def _budget_text(budgets: dict[str, Any]) -> list[str]:
    lines = []
    lora = budgets.get("lora") or {}
    recipe = lora.get("recipe") or {}
    phi = budgets.get("phi") or {}
    if recipe:
        lines.append(
            f"- Stage 1 (φ distillation): {recipe.get('stage1_steps')} steps on "
            f"{recipe.get('stage1_prompts')} generator prompts, "
            f"{recipe.get('stage1_trajectory_steps')}-step teacher trajectories, lr "
            f"{recipe.get('stage1_lr')}, φ seed {recipe.get('phi_seed')}, Tc={recipe.get('chunk_frames')} "
            f"To={recipe.get('overlap_frames')}."
        )
        frames = recipe.get("stage2_frames") or "training-length"
        if recipe.get("stage2_data") == "trajectories":
            data = (
                f"the student's own guided sampling states ({recipe.get('stage2_trajectory_prompts')} "
                f"generator prompts of {frames} frames per buffer, refreshed every "
                f"{recipe.get('stage2_trajectory_refresh')} steps; target: the softmax teacher's velocity)"
            )
            kind = "fine-tune on its own trajectories"
        else:
            data = f"{recipe.get('stage2_clips')} generator clips of {frames} frames"
            kind = "flow-matching fine-tune"
        lines.append(
            f"- Stage 2 ({kind}): {recipe.get('stage2_steps')} steps × batch {recipe.get('stage2_batch')} "
            f"on {data}, LoRA rank {recipe.get('lora_rank')} "
            f"({(lora.get('stage2') or {}).get('trainable', 'LoRA')}), lr {recipe.get('stage2_lr')}, "
            f"warm-up {recipe.get('stage2_warmup')}, seed {recipe.get('stage2_seed')}."
        )
        for entry in lora.get("continuations") or []:
            settings = entry.get("settings") or {}
            lines.append(
                f"- Stage 2b (continued from the stage-2 LoRA file, fresh optimiser): "
                f"{settings.get('steps')} more steps on new prompts, seed {settings.get('seed')}, "
                f"boundary-step loss weight {settings.get('seam_weight')}; {entry.get('seconds')} s."
            )
        sampling = recipe.get("sampling_overlap_frames")
        if sampling is not None and sampling != recipe.get("overlap_frames"):
            lines.append(
                f"- Sampled at To={sampling} (trained at To={recipe.get('overlap_frames')}; φ and the LoRA "
                "do not depend on To, the φ file records the sampling overlap): every student row below."
            )
        seconds = lora.get("seconds") or {}
        if seconds:
            lines.append(
                "- Training time: "
                + ", ".join(f"{k} {v} s" for k, v in seconds.items())
                + f" ({threads_text(lora.get('threads'))})."
            )
    elif phi:
        stage1 = phi.get("recipe") or phi
        lines.append(
            f"- Stage-1 φ file: {stage1.get('stage1_steps', stage1.get('steps'))} distillation steps on "
            f"{stage1.get('stage1_prompts', stage1.get('prompts'))} prompts, "
            f"{stage1.get('stage1_trajectory_steps', stage1.get('trajectory_steps'))}-step trajectories, "
            f"φ seed {stage1.get('phi_seed')} (from its metadata; no stage-2 LoRA file)."
        )
    return lines


def _content_row(label: str, frames: int, pooled: dict[str, Any] | None, psnr: str) -> str:
    p = pooled or {}
    return (
        f"| {label} | {frames} | {_pct(p.get('presence'))} | {_pct(p.get('kind_correct'))} | "
        f"{_pct(p.get('spurious_frames'))} | {_pct(p.get('continuous_pairs'))} | "
        f"{_pct(p.get('blank_frames'))} | {_fmt(p.get('seam_ratio'))} | {psnr} |"
    )


def student_section(summary: dict[str, Any]) -> list[str]:
    """The shipped student's budgets and its content measures next to the teacher's, at both lengths."""
    student = summary.get("student")
    if student is None:
        return []
    short, long = summary["training_frames"], summary["long_frames"]
    lines = ["## The shipped student", ""]
    rows = student.get("rows", {})
    if not rows:
        reasons = "; ".join(student.get("skipped", {}).values()) or "no files"
        lines += [
            f"The shipped student's files are absent ({reasons}): its rows are skipped. They appear here "
            "once `python -m rehyat train-student` has written them next to the teacher's files (or with "
            "`--student-dir`).",
            "",
        ]
        return lines
    lines += _budget_text(student.get("budgets", {}))
    for name, reason in student.get("skipped", {}).items():
        lines.append(f"- {name.replace('_', ' ')}: skipped — {reason}.")
    t = STUDENT_TARGETS
    lines += [
        "",
        "Content against the generator's ground truth (pooled over the held-out clips; seam ratio = mean "
        "frame change across chunk boundaries over the change elsewhere, ≈ 1 without seams). Targets at "
        f"{long} frames: presence ≥ {100 * t.presence:.0f}%, kind ≥ {100 * t.kind:.0f}%, spurious ≤ "
        f"{100 * t.spurious:.0f}%, blank ≤ {100 * (t.blank or 0):.0f}%, seam ratio ≤ {t.seam_ratio}.",
        "",
        "| row | frames | presence | kind right | spurious | continuity | blank | seam ratio | PSNR (dB) |",
        "|" + "---|" * 9,
    ]
    pooled = summary.get("teacher", {}).get("content_pooled", {})
    every = all_rows(summary)
    names = [summary.get("headline", "rehyat"), ORACLE, STAGE1, STUDENT]
    for kind, frames in (("short", short), ("long", long)):
        lines.append(_content_row("teacher", frames, pooled.get(kind), "–"))
        for name in names:
            record = every.get(name)
            if record is None:
                continue
            content = (record.get("content") or {}).get(kind)
            lines.append(_content_row(_label(record), frames, content, _cell(record, "psnr_db", kind)))
    main = rows.get(STUDENT, {}).get("content", {}).get("long")
    if main is not None:
        failed = [k for k, ok in main.get("passes", {}).items() if not ok]
        lines += [
            "",
            f"Student at {long} frames ({main.get('clips')} held-out clip(s); the issue's targets are judged "
            "on ≥ 12): "
            + ("every target met." if not failed else "targets not met: " + ", ".join(failed) + "."),
        ]
    return lines + [""]
