"""The fidelity table: its cases, cost shares, clip metrics, paired statistics and the command on a
reduced grid (real teacher, real distillation, fine-tune and generation; tiny budgets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rehyat.config import HybridAttentionConfig
from rehyat.fidelity import clip_metrics
from rehyat.fidelity.cases import FidelityCase, full_grid, grid, reduced_grid
from rehyat.fidelity.cost import (
    WAN_1_3B_81_FRAMES,
    AttentionShape,
    attention_share,
)
from rehyat.fidelity.report import (
    direction_verdict,
    equivalence_verdict,
    markdown,
    paired_difference,
    t_critical,
    trends,
)
from rehyat.fidelity.run import FidelityConfig, run_fidelity, selected_cases, summarise
from rehyat.flops import rehyat_attention_flops, softmax_attention_flops
from rehyat.teacher.distillation import generator_prompts, scene_key
from rehyat.teacher.shapes import generate_clip

TINY = dict(
    distill_steps=2,
    distill_prompts=3,
    distill_trajectory_steps=2,
    clips=2,
    long_clips=1,
    long_factor=2,
    sampling_steps=2,
    finetune_steps=2,
    finetune_samples=4,
)


def test_grids_cover_every_comparison_with_unique_names():
    cases = full_grid(4)
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert {c.group for c in cases} == {
        "reference",
        "baseline",
        "chunk_frames",
        "overlap_frames",
        "causality",
        "blocks",
        "finetune",
    }
    assert sorted(c.attention.chunk_frames for c in cases if c.group == "chunk_frames") == [1, 2, 5]
    assert sorted(c.attention.overlap_frames for c in cases if c.group == "overlap_frames") == [0, 2, 3]
    assert {c.attention.variant for c in cases if c.group == "baseline"} == {
        "linear_only",
        "windowed_softmax",
        "uniform_hybrid",
    }
    assert [c.converted_blocks for c in cases if c.group == "blocks"] == [2, 3]
    reduced = reduced_grid(4)
    assert {c.group for c in reduced} == {c.group for c in cases}
    assert set(c.name for c in reduced) <= set(names)
    with pytest.raises(ValueError, match="grid must be one of"):
        grid("huge")


def test_case_conversion_labels_and_refusals():
    case = FidelityCase("b2", "blocks", converted_blocks=2)
    assert case.conversion(4).resolve_blocks(4) == (2, 3)
    assert case.label == "ReHyAt Tc=3 To=1, 2 blocks"
    window = FidelityCase("w", "baseline", HybridAttentionConfig(variant="windowed_softmax"))
    assert not window.distils
    with pytest.raises(ValueError, match="finetune needs φ"):
        FidelityCase("w", "baseline", HybridAttentionConfig(variant="windowed_softmax"), finetune=True)
    with pytest.raises(ValueError, match="group must be one of"):
        FidelityCase("x", "other")


def test_attention_shares_follow_the_analytic_counts():
    shape = WAN_1_3B_81_FRAMES
    softmax = softmax_attention_flops(1, 12, 21 * 1560, 128)
    ref = FidelityCase("rehyat", "reference")
    expected = rehyat_attention_flops(1, 12, 21, 1560, 128, chunk_frames=3, overlap_frames=1).total / softmax
    assert attention_share(ref, shape, 4) == pytest.approx(expected)
    assert 0.15 < expected < 0.3  # the paper's "up to 4× saving"
    half = FidelityCase("b2", "blocks", converted_blocks=2)  # 2 of 4 teacher blocks → 15 of Wan's 30
    assert attention_share(half, shape, 4) == pytest.approx((15 * expected + 15) / 30)
    linear = FidelityCase("l", "baseline", HybridAttentionConfig(variant="linear_only", causal=False))
    window = FidelityCase("w", "baseline", HybridAttentionConfig(variant="windowed_softmax"))
    assert (
        attention_share(linear, shape, 4) < attention_share(window, shape, 4) < attention_share(ref, shape, 4)
    )
    # The teacher's shape: at its 16-frame training length φ's MLP outweighs the small softmax (ReHyAt
    # costs more than softmax); at 64 frames the quadratic softmax dominates and ReHyAt is cheaper.
    assert attention_share(ref, AttentionShape("teacher", 4, 1, 128, 16, 64), 4) > 1
    assert attention_share(ref, AttentionShape("teacher", 4, 1, 128, 64, 64), 4) < 0.5
    three = FidelityCase("b3", "blocks", converted_blocks=3)  # 30·3/4 = 22.5 → 23 (halves up)
    assert attention_share(three, shape, 4) == pytest.approx((23 * expected + 7) / 30)


def test_clip_metrics_against_the_teacher_and_the_ground_truth():
    clip = generate_clip(3, frames=12)
    same = clip_metrics.against_teacher(clip.pixels, clip.pixels, chunk_frames=3)
    assert same["psnr_db"] is None  # identical: infinite PSNR is reported as None, not a number
    assert same["cosine"] == pytest.approx(1.0)
    assert same["flicker_ratio"] == pytest.approx(1.0)
    noisy = clip.pixels + 0.2 * torch.randn(clip.pixels.shape, generator=torch.Generator().manual_seed(0))
    worse = clip_metrics.against_teacher(clip.pixels, noisy.clamp(-1, 1), chunk_frames=3)
    assert 5 < worse["psnr_db"] < 40 and worse["cosine"] < 1 and worse["flicker_ratio"] > 1
    truth = clip_metrics.content(clip.pixels, clip.prompt)
    assert truth == {"shapes_found": 1.0, "spurious": 0.0, "motion_plausible": 1.0, "kind_correct": 1.0}
    black = clip_metrics.content(-torch.ones_like(clip.pixels), clip.prompt)
    assert black["shapes_found"] == 0.0 and black["motion_plausible"] is None
    assert clip_metrics.content_cosine(clip.pixels, -torch.ones_like(clip.pixels)) == 0.0
    stats = clip_metrics.mean_and_sem([1.0, 3.0, None, math.nan])
    assert stats["mean"] == 2.0 and stats["n"] == 2 and stats["sem"] == pytest.approx(1.0)
    assert clip_metrics.mean_and_sem([None]) == {"mean": None, "sem": None, "n": 0}


def _summary(a_rows, b_rows, **others):
    cases = {}
    for name, rows in (("rehyat", a_rows), ("linear_only", b_rows), *others.items()):
        if rows is None:
            continue
        record = {
            "case": {"group": "reference" if name == "rehyat" else "baseline", "converted_blocks": None},
            "short": [{"psnr_db": v} for v in rows],
            "long": [],
        }
        record["summary"] = summarise(record)
        cases[name] = record
    return {"cases": cases, "training_frames": 16, "long_frames": 64}


def test_paired_differences_and_verdicts():
    summary = _summary([20.0, 21.0, 22.0, 23.0], [15.0, 15.5, 16.0, 17.5])
    d = paired_difference(summary, "rehyat", "linear_only")
    assert d["mean"] == pytest.approx(5.5) and d["n"] == 4 and d["significant"]
    assert direction_verdict(d) == "agrees"
    noisy = paired_difference(_summary([20.0, 18.0], [19.0, 19.5]), "rehyat", "linear_only")
    assert not noisy["significant"] and direction_verdict(noisy) == "no measurable difference"
    assert direction_verdict(None) == "not measured"
    (claim,) = trends(summary)
    assert claim["claim"] == "ReHyAt keeps more than linear-only attention" and claim["verdict"] == "agrees"
    assert d["half_width"] == pytest.approx(t_critical(3) * d["sem"])
    assert t_critical(1) == pytest.approx(12.706) and t_critical(100) == 1.96


def test_trend_verdicts_for_overlap_causality_and_missing_cases():
    base = [20.0, 21.0, 22.0, 23.0]
    # To: a clear 0 → 1 jump; a noisy (non-significant) later step must not spoil the saturation.
    summary = _summary(base, None, to0=[17.0, 18.1, 18.9, 20.0], to2=[21.5, 19.8, 23.4, 22.6])
    (to,) = trends(summary)
    assert to["claim"] == "One overlap frame matters, more saturate" and to["verdict"] == "agrees"
    summary = _summary(base, None, to0=[17.0, 18.1, 18.9, 20.0], to2=[24.0, 25.1, 25.9, 27.0])
    assert trends(summary)[0]["verdict"] == "jump agrees, saturation does not"
    # Causality is an equivalence claim: a tight interval around 0 agrees, a wide one is inconclusive.
    tight = paired_difference(
        _summary(base, None, non_causal=[20.1, 20.9, 22.05, 23.0]), "non_causal", "rehyat"
    )
    assert equivalence_verdict(tight) == "agrees"
    wide = paired_difference(
        _summary(base, None, non_causal=[22.0, 19.0, 24.0, 21.0]), "non_causal", "rehyat"
    )
    assert equivalence_verdict(wide).startswith("no significant difference")
    off = paired_difference(_summary(base, None, non_causal=[18.0, 19.0, 20.1, 21.0]), "non_causal", "rehyat")
    assert equivalence_verdict(off) == "does not agree"
    assert equivalence_verdict(None) == "not measured"
    # Without the reference nothing can be paired: claims say so instead of crashing or guessing.
    alone = _summary(None, None, non_causal=base, uniform_r2=base)
    assert {t["verdict"] for t in trends(alone)} == {"not measured"}


def test_config_validation_names_the_parameter():
    with pytest.raises(ValueError, match="clips must be an integer in"):
        FidelityConfig(clips=0)
    with pytest.raises(ValueError, match="long_clips must be an integer in"):
        FidelityConfig(clips=2, long_clips=3)
    with pytest.raises(ValueError, match="grid must be one of"):
        FidelityConfig(grid="all")
    with pytest.raises(ValueError, match="unknown case"):
        selected_cases(FidelityConfig(cases=("nope",)), 4)
    assert [c.name for c in selected_cases(FidelityConfig(cases=("finetuned",)), 4)] == [
        "rehyat",
        "finetuned",
    ]


def test_held_out_prompts_exclude_the_distillation_prompts():
    train = generator_prompts(8)
    held = generator_prompts(8, first_seed=50_000, exclude=train)
    assert len(set(train)) == 8 and len(set(held)) == 8
    assert not {scene_key(p) for p in train} & {scene_key(p) for p in held}  # not even reordered
    assert scene_key("a red circle and a blue square bounce") == scene_key(
        "a blue square and a red circle bounce"
    )
    assert scene_key("a red circle bounces") != scene_key("a red circle and a blue square bounce")


def test_fidelity_command_on_the_reduced_grid_writes_everything_and_resumes(tmp_path):
    output, work = tmp_path / "docs", tmp_path / "run"
    config = FidelityConfig(grid="reduced", output=str(output), run_dir=str(work), **TINY)
    lines: list[str] = []
    summary = run_fidelity(config, log=lines.append)
    names = [c.name for c in reduced_grid(4)]
    assert list(summary["cases"]) == names
    for name in names:
        case = summary["cases"][name]
        assert len(case["short"]) == 2 and len(case["long"]) == 1
        assert case["long"][0]["psnr_db"] is not None and 0 <= case["long"][0]["shapes_found"] <= 1
        assert set(case["attention_flops_share"]) == {"teacher_long", "wan2.1_1.3b_81_frames"}
        assert (work / "cases" / f"{name}.json").is_file()
    assert summary["cases"]["finetuned"]["finetune"]["samples"] == 4
    assert summary["cases"]["windowed_softmax"]["distillation"] is None
    assert 0 < summary["teacher"]["attention_temporal_structure"]["mean_over_blocks"]["beyond_window"] < 1
    assert set(summary["eval_set"][0]) == {"prompt", "seed"}
    held = {scene_key(e["prompt"]) for e in summary["eval_set"]}
    assert not held & {scene_key(p) for p in summary["distill_prompts"]}
    written = json.loads((output / "fidelity.json").read_text())
    assert written["cases"].keys() == summary["cases"].keys()
    doc = (output / "fidelity.md").read_text()
    for name in names:
        assert summary["cases"][name]["case"]["label"] in doc
    assert "## Against the paper" in doc and "Table 7" in doc
    assert (output / "fidelity_scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The document is a pure function of the results (only the generation date line may differ).
    assert markdown(summary).split("\n")[3:] == doc.split("\n")[3:]

    # An interrupted run: one case lost its result; the rerun recomputes only that one.
    (work / "cases" / "tc1.json").unlink()
    again: list[str] = []
    second = run_fidelity(config, log=again.append)
    assert sum("done earlier" in line for line in again) == len(names) - 1
    assert any(line.startswith("  tc1: distilling") for line in again)
    assert second["cases"]["rehyat"]["short"] == summary["cases"]["rehyat"]["short"]

    with pytest.raises(ValueError, match=r"other settings \(distill_steps\)"):
        run_fidelity(FidelityConfig(**{**config.__dict__, "distill_steps": 3}), log=lambda _: None)


def test_fidelity_cli_refuses_bad_options():
    result = subprocess.run(
        [sys.executable, "-m", "rehyat", "fidelity", "--clips", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "clips must be an integer in [1, 1000]" in result.stderr


def test_case_subset_without_long_clips_adds_the_reference(tmp_path):
    config = FidelityConfig(
        **{**TINY, "long_clips": 0, "clips": 1},
        cases=("windowed_softmax",),
        output=str(tmp_path / "out"),
        run_dir=str(tmp_path / "run"),
    )
    summary = run_fidelity(config, log=lambda _: None)
    assert list(summary["cases"]) == ["rehyat", "windowed_softmax"]
    assert (
        summary["cases"]["windowed_softmax"]["long"] == []
        and summary["cases"]["rehyat"]["summary"]["long"] == {}
    )
    assert "ReHyAt − windowed softmax" in (tmp_path / "out" / "fidelity.md").read_text()


def test_distillation_refuses_the_windowed_softmax_baseline():
    from rehyat.config import ConversionConfig
    from rehyat.teacher.distillation import distil_on_teacher
    from rehyat.teacher.model import load_teacher

    teacher = load_teacher()
    conversion = ConversionConfig(attention=HybridAttentionConfig(variant="windowed_softmax"))
    with pytest.raises(ValueError, match="no φ to distil"):
        distil_on_teacher(
            teacher, conversion, steps=1, prompts=generator_prompts(2), sampling=teacher.config.sampling
        )


def test_committed_fidelity_doc_matches_its_json():
    """docs/fidelity.md is what the report code makes of docs/fidelity.json (regenerated, not hand-edited)."""
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    summary = json.loads((docs / "fidelity.json").read_text(encoding="utf-8"))
    doc = (docs / "fidelity.md").read_text(encoding="utf-8")
    assert markdown(summary).split("\n")[3:] == doc.split("\n")[3:]
    assert summary["settings"]["grid"] == "full" and len(summary["cases"]) == len(full_grid(4))
