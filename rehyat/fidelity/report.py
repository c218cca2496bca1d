"""The fidelity table's outputs: ``fidelity.json``, ``fidelity.md`` and ``fidelity_scatter.png``.

The Markdown is generated from the JSON, including the comparison with the paper's trends
(Tables 6–8): each statement is computed from paired per-clip differences (same prompt, seed and
teacher clip), called significant when the mean difference exceeds twice its standard error.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, atomic_write_bytes
from .report_sections import (
    attention_error_section,
    calibration_section,
    chunk_section,
    seeds_section,
    student_section,
    threads_text,
)

WAN = "wan2.1_1.3b_81_frames"
EQUIVALENCE_MARGIN_DB = 0.5  # "no difference" needs the whole 95 % interval within ± this
# Two-sided 95 % Student-t critical values by degrees of freedom (1…30); 1.96 beyond.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_critical(df: int) -> float:
    """The two-sided 95 % Student-t critical value for ``df`` ≥ 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be an integer ≥ 1; got {df}")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def write_report(summary: dict[str, Any], output: Path) -> list[Path]:
    """Write the three files into ``output``; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    paths = [
        atomic_write_bytes(output / "fidelity.json", (json.dumps(summary, indent=1) + "\n").encode()),
        scatter_plot(summary, output / "fidelity_scatter.png"),
    ]
    paths.append(atomic_write_bytes(output / "fidelity.md", markdown(summary).encode()))
    return paths


# --- paired statistics ------------------------------------------------------------------------------


def seed_spread(
    summary: dict[str, Any], metric: str = "psnr_db", kind: str = "short"
) -> dict[str, Any] | None:
    """Training noise: the sample standard deviation over the headline case's φ seeds of its mean
    ``metric`` over the same clips (``{"sd", "n", "means"}``; None with fewer than two seeds)."""
    seeds = summary.get("phi_seeds")
    if not seeds:
        return None
    headline = summary.get("cases", {}).get(seeds.get("case", "rehyat"))
    records = ([headline] if headline else []) + list(seeds.get("runs", {}).values())
    means = []
    for record in records:
        values = [row.get(metric) for row in record.get(kind) or []]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            means.append(sum(values) / len(values))
    if len(means) < 2:
        return None
    mean = sum(means) / len(means)
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1))
    return {"sd": sd, "n": len(means), "means": means}


def _trained(record: dict[str, Any]) -> bool:
    """Whether a case's result is one training run (φ distilled or fine-tuned)."""
    return record.get("distillation") is not None or bool(record.get("finetune"))


def paired_difference(
    summary: dict[str, Any], case: str, reference: str, metric: str = "psnr_db", kind: str = "short"
) -> dict[str, Any] | None:
    """Mean ± standard error of ``case − reference`` over the clips both have (same prompt and seed).

    With φ seeds in the run (:func:`seed_spread`), the training noise of each trained side (one run
    each) is added to the clips' variance before the 95 % interval (Welch–Satterthwaite degrees of
    freedom): ``half_width`` then includes it, ``half_width_clips`` is the clips-only interval.
    """
    cases = summary["cases"]
    if case not in cases or reference not in cases:
        return None
    pairs = [
        (a.get(metric), b.get(metric))
        for a, b in zip(cases[case].get(kind, []), cases[reference].get(kind, []), strict=False)
    ]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    sem = (
        math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
        if len(diffs) > 1
        else None
    )
    half_width = None if sem is None else t_critical(len(diffs) - 1) * sem  # 95 % interval half-width
    out: dict[str, Any] = {"mean": mean, "sem": sem, "n": len(diffs), "half_width": half_width}
    runs = sum(_trained(cases[name]) for name in (case, reference))
    spread = seed_spread(summary, metric, kind) if sem is not None and runs else None
    if spread is not None:
        clips_var, train_var = sem**2, runs * spread["sd"] ** 2
        denominator = clips_var**2 / (len(diffs) - 1) + train_var**2 / (spread["n"] - 1)
        df = (clips_var + train_var) ** 2 / denominator if denominator > 0 else len(diffs) - 1
        out.update(
            half_width=t_critical(max(1, int(df))) * math.sqrt(clips_var + train_var),
            half_width_clips=half_width,
            training_sd=spread["sd"],
            training_runs=runs,
            df=df,
        )
    out["significant"] = out["half_width"] is not None and abs(mean) > out["half_width"]
    return out


def _value(summary: dict[str, Any], case: str, metric: str = "psnr_db", kind: str = "short") -> float | None:
    entry = summary["cases"].get(case, {}).get("summary", {}).get(kind, {}).get(metric)
    return None if entry is None else entry["mean"]


def _diff_text(d: dict[str, Any] | None, unit: str = " dB") -> str:
    if d is None:
        return "n/a"
    if d["half_width"] is None:
        return f"{d['mean']:+.2f}{unit} (one clip)"
    star = " (significant)" if d["significant"] else " (within noise)"
    digits = 2 if f"{abs(d['mean']):.2f}" != f"{d['half_width']:.2f}" else 3  # never print "x ± x"
    if "training_sd" in d:
        return (
            f"{d['mean']:+.{digits}f} ± {d['half_width']:.{digits}f}{unit} with training noise (clips alone "
            f"± {d['half_width_clips']:.{digits}f}, φ-seed SD {d['training_sd']:.{digits}f}){star}"
        )
    return f"{d['mean']:+.{digits}f} ± {d['half_width']:.{digits}f}{unit}{star}"


def equivalence_verdict(d: dict[str, Any] | None, margin: float = EQUIVALENCE_MARGIN_DB) -> str:
    """Verdict on an expected *zero* paired difference: its 95 % interval must lie within ± ``margin``."""
    if d is None:
        return "not measured"
    if d["significant"]:
        return "does not agree"
    if d["half_width"] is not None and abs(d["mean"]) + d["half_width"] <= margin:
        return "agrees"
    return f"no significant difference, but the interval is wider than ±{margin:g} dB"


def direction_verdict(d: dict[str, Any] | None) -> str:
    """Verdict on an expected *positive* paired difference."""
    if d is None:
        return "not measured"
    if d["mean"] > 0:
        return "agrees" if d["significant"] else "agrees in direction, within noise"
    return "does not agree" if d["significant"] else "no measurable difference"


def trends(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims checked on this run: ``{"claim", "paper", "here", "verdict"}`` each.

    Paired differences of PSNR at the training length decide each verdict (long clips are shown too).
    """
    out = []
    cases = summary["cases"]

    def add(claim: str, paper: str, here: str, verdict: str) -> None:
        out.append({"claim": claim, "paper": paper, "here": here, "verdict": verdict})

    def both(case: str, reference: str) -> tuple[dict | None, str]:
        d = paired_difference(summary, case, reference)
        dl = paired_difference(summary, case, reference, kind="long")
        return (
            d,
            f"{_diff_text(d)} at {summary['training_frames']} frames, {_diff_text(dl)} at "
            f"{summary['long_frames']}",
        )

    tc = [(n, name) for n, name in ((1, "tc1"), (2, "tc2"), (3, "rehyat"), (5, "tc5")) if name in cases]
    if len(tc) >= 2:
        here = ", ".join(f"Tc={n}: {_fmt(_value(summary, name))} dB" for n, name in tc)
        steps = [paired_difference(summary, b, a) for (_, a), (_, b) in zip(tc, tc[1:], strict=False)]
        here += "; steps: " + ", ".join(
            f"Tc {m}→{n}: {_diff_text(d)}"
            for ((m, _), (n, _)), d in zip(zip(tc, tc[1:], strict=False), steps, strict=True)
        )
        span = paired_difference(summary, tc[-1][1], tc[0][1])
        verdict = direction_verdict(span)
        if verdict == "agrees" and any(d is not None and d["mean"] < 0 and d["significant"] for d in steps):
            verdict = "agrees overall, not step by step"
        add(
            "Larger chunks (Tc) give higher fidelity",
            "Table 6 (25 blocks, To=1): VBench total 80.97 / 82.08 / 82.17 / 82.48 for Tc = 1 / 2 / 3 / 5",
            here,
            verdict,
        )

    to = [(n, name) for n, name in ((0, "to0"), (1, "rehyat"), (2, "to2"), (3, "to3")) if name in cases]
    if len(to) >= 2 and to[0][0] == 0 and to[1][0] == 1:
        jump = paired_difference(summary, "rehyat", "to0")
        later = [paired_difference(summary, b, a) for (_, a), (_, b) in zip(to[1:], to[2:], strict=False)]
        here = ", ".join(f"To={n}: {_fmt(_value(summary, name))} dB" for n, name in to)
        here += f"; To 0 → 1: {_diff_text(jump)}"
        if later:
            here += "; later steps: " + ", ".join(_diff_text(d) for d in later)
        verdict = direction_verdict(jump)
        later_big = [  # a later step saturation does not allow: significant and as large as the jump
            d
            for d in later
            if d is not None and jump is not None and d["significant"] and abs(d["mean"]) >= jump["mean"]
        ]
        if verdict == "agrees" and later_big:
            verdict = "jump agrees, saturation does not"
        add(
            "One overlap frame matters, more saturate",
            "Table 7 (25 blocks, Tc=3): VBench total 81.56 / 82.17 / 82.17 / 82.19 for To = 0 / 1 / 2 / 3",
            here,
            verdict,
        )

    if "non_causal" in cases:
        d, here = both("non_causal", "rehyat")
        add(
            "Causal ≈ non-causal",
            "Table 8 (15 blocks, Tc=3, To=0): VBench total 82.35 causal (4.04 block TFLOPs), "
            "82.27 non-causal (4.17)",
            "non-causal − causal: " + here,
            equivalence_verdict(d),
        )

    if "linear_only" in cases:
        d, here = both("rehyat", "linear_only")
        add(
            "ReHyAt keeps more than linear-only attention",
            "§1–2: linear-only attention has an expressiveness gap (the paper gives Hedgehog's cost in "
            "Tables 4–5, not its quality)",
            "ReHyAt − linear-only: " + here,
            direction_verdict(d),
        )

    if "windowed_softmax" in cases:
        d, here = both("rehyat", "windowed_softmax")
        add(
            "The linear part adds to the softmax window",
            "§2: linear attention carries the long-range dependencies, softmax the local ones",
            "ReHyAt − windowed softmax (same Tc, To): " + here,
            direction_verdict(d),
        )

    if "uniform_r2" in cases:
        d, here = both("rehyat", "uniform_r2")
        share = cases.get("rehyat", {}).get("attention_flops_share", {}).get(WAN)
        share_u = cases["uniform_r2"].get("attention_flops_share", {}).get(WAN)
        cost = "" if share is None or share_u is None else f" (at {share_u / share:.1f}× ReHyAt's FLOPs)"
        add(
            "A temporally non-uniform hybrid beats a uniform one",
            "§2, §5.2: uniform R=2 is the best-quality uniform hybrid and costs ~2× ReHyAt Tc=3, To=1",
            f"ReHyAt − uniform R=2{cost}: " + here,
            direction_verdict(d),
        )

    blocks = sorted(
        (c["case"]["converted_blocks"], name) for name, c in cases.items() if c["case"]["group"] == "blocks"
    )
    if blocks:
        parts = []
        verdicts = []
        for n, name in blocks:
            d, here = both(name, "rehyat")
            parts.append(f"{n} blocks − all: {here}")
            verdicts.append(direction_verdict(d))
        verdict = verdicts[0] if len(set(verdicts)) == 1 else "mixed: " + ", ".join(verdicts)
        add(
            "Converting fewer blocks keeps more fidelity",
            "Fig. 5: 15 / 20 / 25 converted blocks trade FLOPs against VBench",
            "; ".join(parts),
            verdict,
        )

    if "finetuned" in cases:
        d, here = both("finetuned", "rehyat")
        seams = [_value(summary, name, metric="seam_ratio") for name in ("rehyat", "finetuned")]
        found = paired_difference(summary, "finetuned", "rehyat", metric="shapes_found", kind="long")
        teacher_found = summary["teacher"].get("content", {}).get("shapes_found", {}).get("mean")
        shapes = (
            ""
            if found is None
            else (
                f"; shapes found at {summary['long_frames']} frames: {_diff_text(found, unit='')} "
                f"(distilled {_fmt(_value(summary, 'rehyat', 'shapes_found', 'long'))}, fine-tuned "
                f"{_fmt(_value(summary, 'finetuned', 'shapes_found', 'long'))}, "
                f"teacher {_fmt(teacher_found)})"
            )
        )
        add(
            "Fine-tuning (stage 2) improves on distillation alone",
            "§3.4.2: a short flow-matching fine-tune recovers quality lost in distillation, notably the "
            "smoothness between chunks",
            f"fine-tuned − distilled: {here}; seam ratio {_fmt(seams[0])} → {_fmt(seams[1])}{shapes}",
            direction_verdict(d),
        )
    return out


# --- markdown ---------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(summary: dict[str, Any], case: str, metric: str, kind: str, digits: int = 2) -> str:
    entry = summary["cases"][case]["summary"].get(kind, {}).get(metric)
    if entry is None or entry["mean"] is None:
        return "–"
    sem = "" if entry["sem"] is None else f" ± {entry['sem']:.{digits}f}"
    return f"{entry['mean']:.{digits}f}{sem}"


def _table(summary: dict[str, Any], names: list[str]) -> list[str]:
    long = summary["long_frames"]
    short = summary["training_frames"]
    head = (
        f"| case | PSNR {short} f (dB) | cosine {short} f | flicker ratio | seam ratio | "
        f"PSNR {long} f (dB) | shapes found {long} f | motion plausible {long} f | "
        "attention FLOPs (Wan 1.3B, 81 f) | attention FLOPs (teacher, long) |"
    )
    rows = [head, "|" + "---|" * 10]
    for name in names:
        c = summary["cases"][name]
        share = c.get("attention_flops_share", {})
        rows.append(
            f"| {c['case']['label']} | {_cell(summary, name, 'psnr_db', 'short')} | "
            f"{_cell(summary, name, 'cosine', 'short', 3)} | "
            f"{_cell(summary, name, 'flicker_ratio', 'short')} | "
            f"{_cell(summary, name, 'seam_ratio', 'short')} | {_cell(summary, name, 'psnr_db', 'long')} | "
            f"{_cell(summary, name, 'shapes_found', 'long')} | "
            f"{_cell(summary, name, 'motion_plausible', 'long')} | "
            f"{_share(share.get(WAN))} | {_share(share.get('teacher_long'))} |"
        )
    return rows


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _teacher_facts(summary: dict[str, Any]) -> dict[str, Any]:
    """Blocks, heads, width, tokens per frame, frame size, sampling steps and shift of the run's teacher."""
    config = summary["teacher"].get("config", {})
    dit, clip = config.get("dit", {}), config.get("clip", {})
    size = clip.get("size", 32)
    patch = (dit.get("patch_size") or [1, 2, 2])[1]
    steps = summary["settings"].get("sampling_steps") or config.get("sampling", {}).get("steps", 20)
    return {
        "blocks": dit.get("num_layers", "?"),
        "heads": dit.get("num_heads", "?"),
        "head_dim": dit.get("dim", 0) // max(dit.get("num_heads", 1), 1),
        "tokens": (size // math.isqrt(dit.get("in_dim", 12) // 3) // patch) ** 2,
        "size": size,
        "steps": steps,
        "shift": config.get("sampling", {}).get("shift", "?"),
    }


def _percent(structure: dict[str, Any], key: str) -> str:
    return _fmt(100 * structure[key], 1) if key in structure else "–"


def markdown(summary: dict[str, Any]) -> str:
    """The fidelity document (``docs/fidelity.md``)."""
    cases = summary["cases"]
    settings = summary["settings"]
    teacher = summary["teacher"]
    facts = _teacher_facts(summary)
    training = teacher.get("training", {})
    temporal = teacher.get("attention_temporal_structure", {})
    structure = temporal.get("mean_over_blocks", {})
    content = teacher.get("content", {})
    short, long = summary["training_frames"], summary["long_frames"]
    wan_blocks = summary.get("cost_shapes", {}).get(WAN, {}).get("num_blocks", 30)
    lines = [
        "# Fidelity: ReHyAt configurations and baselines against the softmax teacher",
        "",
        f"Generated by `{summary['command']}` ({settings_line(settings)}) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}, CPU only, {threads_text(summary.get('threads'))}. "
        "Regenerate with that command (it resumes an interrupted run from its work folder).",
        "",
        "## What is measured",
        "",
        f"- **Teacher**: the embedded Wan2.1-architecture DiT (`rehyat/assets`; {facts['blocks']} blocks, "
        f"{facts['heads']} head(s) × {facts['head_dim']}, {facts['tokens']} tokens per frame; trained "
        f"{training.get('steps_done', '?')} of {training.get('steps_scheduled', '?')} scheduled steps) on "
        f"{short}-frame {facts['size']}×{facts['size']} clips of moving shapes — not Wan2.1 itself.",
        f"- **Same budget for every case**: φ distilled for {settings['distill_steps']} steps on "
        f"{settings['distill_prompts']} generator prompts ({settings['distill_trajectory_steps']}-step "
        "teacher trajectories, one captured forward per step, one φ initialisation seed); the "
        "windowed-softmax baseline has no φ.",
        f"- **Held out**: {len(summary['eval_set'])} prompts whose scenes the distillation never saw (also "
        "not as the same shapes in another order), each with its own noise seed; every case and the "
        f"teacher generate from the same prompt and seed ({facts['steps']} Euler steps, the teacher's "
        f"shift {facts['shift']} and guidance). The first {settings['long_clips']} also at {long} "
        f"frames ({settings['long_factor']}× the training length).",
        "- **Against the teacher**: PSNR of the [0, 1] RGB clips; cosine of the clips' RGB (black = 0, so "
        "the shapes dominate); flicker ratio = mean frame-to-frame change over the teacher's (1 = as "
        "steady); seam ratio = mean per-frame error on the two frames around each chunk boundary over the "
        "error elsewhere (> 1: errors gather at chunk seams; on the case's Tc grid, Tc = 3 for the "
        "baselines; none for Tc = 1, where every frame is a boundary).",
        "- **Against the generator's ground truth** (long clips): *shapes found* = share of (frame, colour "
        "named in the prompt) pairs where a colour detector finds that colour; *motion plausible* = share "
        "of consecutive detections that move ≤ 2× the generator's top speed.",
        "- **Statistics**: table cells are mean ± standard error over clips. A difference between two cases "
        "is *paired* (same prompt, seed and teacher clip) and shown as mean ± the half-width of its 95 % "
        "Student-t interval; *significant* when that interval excludes 0. Each verdict is one such test "
        f"(no correction for the ~10 of them), {_noise_text(summary)} \"Causal ≈ non-causal\" agrees only "
        f"when the whole interval lies within ±{EQUIVALENCE_MARGIN_DB:g} dB. Verdicts use PSNR at {short} "
        "frames.",
        "- **Cost**: self-attention FLOPs of all blocks as a share of softmax's, counted analytically "
        f"(`rehyat.flops`), for Wan2.1-1.3B at 81 frames 480×832 (where the method is meant to run; a case "
        f"converting c of the teacher's {facts['blocks']} blocks converts round({wan_blocks}·c/"
        f"{facts['blocks']}) of Wan's {wan_blocks}) and for the teacher's own {long}-frame clips.",
        "",
        "## The teacher",
        "",
        f"- Softmax attention mass on key frames ≥ Tc + To = 4 frames from the query (mean over blocks, "
        f"{temporal.get('frames', short)}-frame noised clips): **{_percent(structure, 'beyond_window')}%**; "
        f"on past frames outside ReHyAt's softmax window: {_percent(structure, 'past_outside_softmax')}%; "
        f"on future frames a causal conversion drops: {_percent(structure, 'future_outside_chunk')}%.",
        f"- Its own {long}-frame clips: shapes found {_fmt(content.get('shapes_found', {}).get('mean'))}, "
        f"motion plausible {_fmt(content.get('motion_plausible', {}).get('mean'))}, spurious colours "
        f"{_fmt(content.get('spurious', {}).get('mean'))} (share of frames).",
        "",
        *attention_error_section(summary),
        "## All cases",
        "",
        *_table(summary, list(cases)),
        "",
        *calibration_section(summary),
        *seeds_section(summary),
        *chunk_section(summary),
        *student_section(summary),
        "## Against the paper",
        "",
        "| claim | paper | this run | verdict |",
        "|---|---|---|---|",
    ]
    for t in trends(summary):
        lines.append(f"| {t['claim']} | {t['paper']} | {t['here']} | **{t['verdict']}** |")
    lines += [
        "",
        "## Cost against fidelity",
        "",
        "![attention FLOPs share against PSNR](fidelity_scatter.png)",
        "",
        "Each point is a case: its self-attention FLOPs share on Wan2.1-1.3B at 81 frames (x) against its "
        f"PSNR to the teacher at {short} and {long} frames (y), like the paper's Fig. 5.",
        "",
        "## Reading it honestly",
        "",
        f"- The teacher is tiny ({facts['blocks']} blocks, {facts['heads']} head(s) × {facts['head_dim']}, "
        f"{facts['tokens']} tokens per frame) and trained on simple synthetic motion; trends that depend "
        'on rich long-range content may not show on it. Where a verdict above says "does not agree", '
        "that is what this model measured — not a claim about Wan2.1.",
        "- The distillation budget is small and the same for all cases; more steps would raise every "
        "distilled case. PSNR against a sampler's output compounds small per-step differences over "
        f"{facts['steps']} steps, so absolute values are low; the paired differences compare cases.",
        "- Nothing here was measured on a GPU; FLOPs are analytic counts, not timings.",
        "",
    ]
    return "\n".join(lines)


def _noise_text(summary: dict[str, Any]) -> str:
    """How training noise enters the intervals (one sentence)."""
    spread = seed_spread(summary)
    if spread is None:
        return "and each case is one distillation run, so run-to-run training noise is not in the interval."
    return (
        f"and each case is one training run: the headline case was distilled from {spread['n']} φ seeds, and "
        f"their spread (SD {spread['sd']:.2f} dB of the mean PSNR at {summary['training_frames']} frames) is "
        "added once per trained side to every interval (Welch–Satterthwaite degrees of freedom) — "
        "*significant* means beyond both clip sampling and training noise."
    )


def settings_line(settings: dict[str, Any]) -> str:
    """One line naming the grid and budget of a run."""
    return (
        f"grid {settings.get('grid')}, {settings['distill_steps']} distillation steps, "
        f"{settings['clips']} held-out clips, {settings['long_clips']} long"
    )


# --- plot -------------------------------------------------------------------------------------------


def scatter_plot(summary: dict[str, Any], path: Path) -> Path:
    """Attention FLOPs share (Wan2.1-1.3B, 81 frames) against PSNR, at both clip lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    colours = {
        "reference": "tab:red",
        "baseline": "black",
        "chunk_frames": "tab:blue",
        "overlap_frames": "tab:green",
        "causality": "tab:purple",
        "blocks": "tab:orange",
        "finetune": "tab:brown",
    }
    for ax, kind, frames in (
        (axes[0], "short", summary["training_frames"]),
        (axes[1], "long", summary["long_frames"]),
    ):
        for name, case in summary["cases"].items():
            x = case.get("attention_flops_share", {}).get(WAN)
            y = _value(summary, name, kind=kind)
            if x is None or y is None:
                continue
            group = case["case"]["group"]
            ax.scatter(100 * x, y, color=colours.get(group, "grey"), s=40, zorder=3)
            ax.annotate(
                case["case"]["label"], (100 * x, y), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        ax.set_title(f"PSNR to the teacher, {frames}-frame clips")
        ax.set_xlabel("self-attention FLOPs, % of softmax (Wan2.1-1.3B, 81 frames 480×832)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    fig.suptitle("Cost against fidelity (embedded teacher; colour = comparison group)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
