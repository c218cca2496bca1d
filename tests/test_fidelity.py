"""The fidelity table: its cases, cost shares, clip metrics, paired statistics and the command on a
reduced grid (real teacher, real distillation, fine-tune and generation; tiny budgets)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from rehyat.baselines import BaselineAttentionConfig
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
from rehyat.fidelity.report_sections import threads_text
from rehyat.fidelity.run import FidelityConfig, run_fidelity, selected_cases, summarise
from rehyat.flops import rehyat_attention_flops, softmax_attention_flops
from rehyat.teacher.distillation import generator_prompts, scene_key
from rehyat.teacher.model import ASSETS
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
    attention_trajectories=2,
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
    window = FidelityCase("w", "baseline", BaselineAttentionConfig(variant="windowed_softmax"))
    assert not window.distils
    with pytest.raises(ValueError, match="finetune needs φ"):
        FidelityCase("w", "baseline", BaselineAttentionConfig(variant="windowed_softmax"), finetune=True)
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
    linear = FidelityCase("l", "baseline", BaselineAttentionConfig(variant="linear_only", causal=False))
    window = FidelityCase("w", "baseline", BaselineAttentionConfig(variant="windowed_softmax"))
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
    no_student = tmp_path / "no_student"  # the shipped student's files are absent here
    no_student.mkdir()
    config = FidelityConfig(
        grid="reduced", output=str(output), run_dir=str(work), student_dir=str(no_student), **TINY
    )
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
    _check_calibrated_sections(summary, doc, phi_seeds=3)
    assert written["calibration"].keys() == summary["calibration"].keys()
    assert written["range_shares"] == summary["range_shares"]
    assert summary["student"]["rows"] == {} and set(summary["student"]["skipped"]) == {
        "shipped_student",
        "shipped_stage1",
    }
    assert "The shipped student's files are absent" in doc and "teacher_phi.safetensors absent" in doc
    skipped = summary["attention_error"]["skipped"]["shipped stage-1 φ"]
    assert skipped.startswith("teacher_phi.safetensors absent")

    # An interrupted run: one case lost its result; the rerun recomputes only that one.
    (work / "cases" / "tc1.json").unlink()
    again: list[str] = []
    second = run_fidelity(config, log=again.append)
    assert sum("done earlier" in line for line in again) == len(names) - 1
    assert any(line.startswith("  tc1: distilling") for line in again)
    assert second["cases"]["rehyat"]["short"] == summary["cases"]["rehyat"]["short"]
    # The sections are stored too: nothing of them is recomputed.
    redone = [line for line in again if any(k in line for k in ("calibration:", "_seed", "attention error"))]
    assert not redone
    oracle = "block_causal_oracle"
    assert second["calibration"][oracle]["short"] == summary["calibration"][oracle]["short"]
    assert second["attention_error"]["cases"] == summary["attention_error"]["cases"]

    with pytest.raises(ValueError, match=r"other settings \(distill_steps\)"):
        run_fidelity(FidelityConfig(**{**config.__dict__, "distill_steps": 3}), log=lambda _: None)
    # The same weights sampled with another shift are another teacher for every stored clip.
    other = tmp_path / "teacher_other_shift"
    other.mkdir()
    for name in ("teacher_dit.safetensors", "teacher_text_encoder.safetensors"):
        shutil.copyfile(ASSETS / name, other / name)
    record = json.loads((ASSETS / "teacher.json").read_text())
    record["config"]["sampling"]["shift"] += 1.0
    (other / "teacher.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"other settings \(sampling\)"):
        run_fidelity(FidelityConfig(**{**config.__dict__, "teacher_dir": str(other)}), log=lambda _: None)


def test_threads_text_counts_threads():
    assert threads_text(1) == "1 thread" and threads_text(2) == "2 threads"
    assert threads_text(None) == "? threads" and threads_text(True) == "? threads"


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
        **{**TINY, "long_clips": 0, "clips": 1, "phi_seeds": 1},
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
    conversion = ConversionConfig(attention=BaselineAttentionConfig(variant="windowed_softmax"))
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


# --- the calibrated sections --------------------------------------------------------------------------


def _check_calibrated_sections(summary, doc, phi_seeds):
    """Calibration rows, range shares, φ seeds, attention error and PSNR by chunk of a finished run."""
    from rehyat.fidelity.calibration import ROWS

    calibration = summary["calibration"]
    assert list(calibration) == list(ROWS)
    for record in calibration.values():
        assert len(record["short"]) == len(summary["eval_set"]) and record["case"]["label"] in doc
        assert record["content"]["short"]["clips"] == len(summary["eval_set"])
    black = calibration["black"]
    assert black["content"]["short"]["blank_frames"] == 1.0 and black["content"]["short"]["presence"] == 0.0
    # The ceiling (1e-3 relative weight noise) is far closer to the teacher than another noise seed.
    shares = summary["range_shares"]
    assert shares["ceiling"]["short"] > shares["floor"]["short"] + 3
    assert shares["rows"]["floor_other_seed"]["short"] == 0.0
    assert shares["rows"]["ceiling_weight_noise"]["short"] == pytest.approx(1.0)
    assert set(shares["rows"]) >= set(summary["cases"]) | set(calibration)
    psnr = summary["cases"]["rehyat"]["summary"]["short"]["psnr_db"]["mean"]
    floor, ceiling = shares["floor"]["short"], shares["ceiling"]["short"]
    assert shares["rows"]["rehyat"]["short"] == pytest.approx((psnr - floor) / (ceiling - floor))
    # φ seeds: seed 0 is the headline case, the others are distilled alike.
    seeds = summary["phi_seeds"]
    assert seeds["seeds"] == list(range(phi_seeds)) and len(seeds["runs"]) == phi_seeds - 1
    for seed, (name, run) in enumerate(seeds["runs"].items(), start=1):
        assert name == f"rehyat_seed{seed}"
        assert run["distillation"]["steps"] == summary["settings"]["distill_steps"]
    spread = seeds["spread"]["short"]["psnr_db"]
    assert (spread is None) == (phi_seeds < 2)
    # Attention error on held-out trajectories: references, every φ seed and the untrained φ.
    errors = summary["attention_error"]
    assert errors["trajectories"] == summary["section_settings"]["attention_trajectories"]
    expected = {"untrained φ", "windowed softmax", "block-causal oracle"}
    expected |= {f"φ seed {s}" for s in range(phi_seeds)}
    assert expected <= set(errors["cases"]) and errors["seeds"] == [f"φ seed {s}" for s in range(phi_seeds)]
    for name in expected:
        blocks = errors["cases"][name]["blocks"]
        assert set(blocks) == {"0", "1", "2", "3"} and all(0 < e < 2 for e in blocks.values())
    means = {name: errors["cases"][name]["mean"] for name in expected}
    # Exact attention to every earlier frame beats the softmax window alone.
    assert means["block-causal oracle"] < means["windowed softmax"]
    assert errors["gap_closed_over_seeds"]["n"] == phi_seeds and errors["gap_closed"]["φ seed 0"] is not None
    # PSNR by chunk: the first chunk is the same for every causal model without a fine-tune.
    tc = summary["cases"]["rehyat"]["case"]["attention"]["chunk_frames"]
    head, exact = summary["cases"]["rehyat"]["chunks"], calibration["block_causal_oracle"]["chunks"]
    assert head["chunk_frames"] == exact["chunk_frames"] == tc
    assert len(head["short"][0]) == math.ceil(summary["training_frames"] / tc)
    for a, b in zip(head["short"], exact["short"], strict=True):
        assert a[0] == pytest.approx(b[0], abs=1e-3)
    for heading in (
        "## Calibration: floor, ceiling and the block-causal oracle",
        "## Per-block attention error (the primary stage-1 evidence)",
        "## PSNR by chunk",
        "## Training noise: φ seeds of the headline case",
        "## The shipped student",
    ):
        assert heading in doc


def test_block_causal_oracle_is_the_teacher_within_one_chunk_and_causal_across_chunks():
    from rehyat.fidelity.oracle import block_causal_model
    from rehyat.models.wan_rehyat import convert
    from rehyat.teacher.model import load_teacher

    teacher = load_teacher()
    frames = 6
    x = teacher.initial_noise(frames, seed=3)  # (1, C, T, h, w)
    t = torch.tensor([500.0])
    context = teacher.encode(["a red circle bounces"])
    with torch.no_grad():
        reference = teacher.dit(x, t, context)
        one_chunk = block_causal_model(teacher, chunk_frames=frames).dit(x, t, context)
        oracle = block_causal_model(teacher, chunk_frames=3).dit(x, t, context)
        converted = copy.deepcopy(teacher)
        convert(converted.dit)  # ReHyAt Tc=3 To=1, untrained φ
        rehyat = converted.dit(x, t, context)
    torch.testing.assert_close(one_chunk, reference, rtol=1e-4, atol=1e-4)  # one chunk: plain softmax
    # The first chunk sees only itself in both causal models; later chunks differ (φ is untrained).
    torch.testing.assert_close(oracle[:, :, :3], rehyat[:, :, :3], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(oracle[:, :, 3:], rehyat[:, :, 3:], atol=1e-4)
    assert not torch.allclose(oracle[:, :, :3], reference[:, :, :3], atol=1e-4)  # it cannot see the future
    # Changing the last chunk's input leaves the earlier chunks' output untouched.
    later = x.clone()
    later[:, :, 3:] += 1.0
    with torch.no_grad():
        moved = block_causal_model(teacher, chunk_frames=3).dit(later, t, context)
    torch.testing.assert_close(moved[:, :, :3], oracle[:, :, :3], rtol=1e-5, atol=1e-5)
    assert teacher.dit.blocks[0].self_attn.attention.__class__.__name__ == "SoftmaxAttention"  # unchanged


def test_perturbed_teacher_has_relative_weight_noise():
    from rehyat.fidelity.oracle import perturbed_model
    from rehyat.teacher.model import load_teacher

    teacher = load_teacher()
    before = {k: v.clone() for k, v in teacher.dit.state_dict().items()}
    noisy = perturbed_model(teacher, 1e-3, seed=0)
    again = perturbed_model(teacher, 1e-3, seed=0)
    for name, weight in teacher.dit.state_dict().items():
        assert torch.equal(weight, before[name])  # the teacher is unchanged
        changed = noisy.dit.state_dict()[name]
        assert torch.equal(changed, again.dit.state_dict()[name])  # seeded
        ratio = (changed - weight)[weight != 0] / weight[weight != 0]
        if ratio.numel() > 100:
            assert 5e-4 < float(ratio.std()) < 2e-3
    with pytest.raises(ValueError, match="relative must be a real number"):
        perturbed_model(teacher, -1.0)


def test_chunk_psnr_and_pooled_content():
    clip = generate_clip(5, frames=8)
    noisy = clip.pixels.clone()
    noisy[:, 3:] = (noisy[:, 3:] + 0.3).clamp(-1, 1)  # frames 3… differ, frames 0–2 are exact
    chunks = clip_metrics.chunk_psnr(clip.pixels, noisy, chunk_frames=3)
    assert len(chunks) == 3 and chunks[0] is None and all(5 < c < 40 for c in chunks[1:])
    with pytest.raises(ValueError, match="chunk_frames must be an integer"):
        clip_metrics.chunk_psnr(clip.pixels, noisy, chunk_frames=0)
    pooled = clip_metrics.pooled_content([clip.pixels], [clip.prompt], None, 3)
    assert pooled["presence"] == 1.0 and pooled["blank_frames"] == 0.0 and pooled["spurious_frames"] == 0.0
    assert pooled["passes"]["presence"] and 0.5 < pooled["seam_ratio"] < 2
    black = clip_metrics.pooled_content([-torch.ones_like(clip.pixels)], [clip.prompt], None, 3)
    assert black["blank_frames"] == 1.0 and not black["passes"]["blank"]
    assert clip_metrics.pooled_content([], [], None, 3) is None


def _seeded_summary(rehyat, seeds, other, trained_other=True):
    cases = {}
    for name, rows in (("rehyat", rehyat), ("linear_only", other)):
        record = {
            "case": {"group": "reference" if name == "rehyat" else "baseline", "converted_blocks": None},
            "short": [{"psnr_db": v} for v in rows],
            "long": [],
            "distillation": {"steps": 1} if name == "rehyat" or trained_other else None,
        }
        record["summary"] = summarise(record)
        cases[name] = record
    runs = {
        f"rehyat_seed{i}": {"short": [{"psnr_db": v} for v in rows], "long": []}
        for i, rows in enumerate(seeds, start=1)
    }
    return {
        "cases": cases,
        "phi_seeds": {"case": "rehyat", "seeds": list(range(len(seeds) + 1)), "runs": runs},
        "training_frames": 16,
        "long_frames": 64,
    }


def test_training_noise_widens_the_paired_intervals():
    from rehyat.fidelity.report import seed_spread

    rehyat = [20.0, 21.0, 22.0, 23.0]
    other = [19.4, 20.5, 21.3, 22.6]  # 0.55 dB below, very consistent across clips
    noisy_seeds = [[x + 1.0 for x in rehyat], [x - 1.0 for x in rehyat]]
    summary = _seeded_summary(rehyat, noisy_seeds, other)
    spread = seed_spread(summary)
    assert spread["n"] == 3 and spread["sd"] == pytest.approx(1.0) and spread["means"][0] == 21.5
    d = paired_difference(summary, "rehyat", "linear_only")
    assert d["half_width_clips"] == pytest.approx(t_critical(3) * d["sem"])
    assert d["significant"] is False and d["half_width"] > 2 * 0.55  # within training noise
    assert d["training_runs"] == 2 and d["training_sd"] == pytest.approx(1.0)
    alone = paired_difference(_seeded_summary(rehyat, [], other), "rehyat", "linear_only")
    assert alone["significant"] and "training_sd" not in alone  # one seed: clips only, as before
    # Quiet seeds barely widen it; an untrained side adds no training noise.
    quiet = _seeded_summary(rehyat, [[x + 0.001 for x in rehyat], rehyat], other, trained_other=False)
    q = paired_difference(quiet, "rehyat", "linear_only")
    assert q["training_runs"] == 1 and q["significant"]
    assert q["half_width"] == pytest.approx(q["half_width_clips"], rel=0.05)
    assert "with training noise" in trends(summary)[0]["here"]


def test_fidelity_rows_of_a_shipped_student_and_its_budgets(tmp_path):
    from rehyat.student import StudentRecipe, save_student, train_student
    from rehyat.teacher.model import load_teacher

    recipe = StudentRecipe(
        stage1_steps=2,
        stage1_prompts=3,
        stage1_trajectory_steps=2,
        stage2_steps=2,
        stage2_batch=2,
        stage2_clips=4,
        stage2_trajectory_prompts=1,
        stage2_frames=16,
    )
    result = train_student(load_teacher(), recipe, log=lambda _: None, work_dir=tmp_path / "stage2")
    folder = tmp_path / "student"
    save_student(result.stage1, result.student, folder, result.report)
    config = FidelityConfig(
        **{**TINY, "clips": 1, "long_clips": 1, "attention_trajectories": 1},
        cases=("rehyat",),
        phi_seeds=1,
        student_dir=str(folder),
        output=str(tmp_path / "out"),
        run_dir=str(tmp_path / "run"),
    )
    summary = run_fidelity(config, log=lambda _: None)
    student = summary["student"]
    assert student["skipped"] == {} and list(student["rows"]) == ["shipped_student", "shipped_stage1"]
    assert student["budgets"]["lora"]["recipe"] == recipe.to_dict()
    assert "loss_curve" not in student["budgets"]["lora"]["stage2"]
    for name, record in student["rows"].items():
        assert len(record["short"]) == 1 and len(record["long"]) == 1
        for kind in ("short", "long"):
            content = record["content"][kind]
            assert {"presence", "kind_correct", "spurious_frames", "continuous_pairs", "blank_frames"} <= set(
                content
            )
            assert "seam_ratio" in content
        assert summary["range_shares"]["rows"][name]["short"] is not None
    # Stage 2 changed the weights: the two rows' clips differ.
    rows = student["rows"]
    assert rows["shipped_student"]["short"][0]["psnr_db"] != rows["shipped_stage1"]["short"][0]["psnr_db"]
    assert "shipped stage-1 φ" in summary["attention_error"]["cases"]
    doc = (tmp_path / "out" / "fidelity.md").read_text()
    assert "shipped student (stage 1 + 2)" in doc and "shipped stage-1 φ only" in doc
    assert ("Stage 2 (fine-tune on its own trajectories): 2 steps × batch 2 on the student's own guided "
            "sampling states (1 generator prompts of 16 frames") in doc
    assert "Stage 1 (φ distillation): 2 steps on 3 generator prompts" in doc
    assert "no seed-to-seed spread" in doc  # one φ seed: said, not hidden
    _check_calibrated_sections(summary, doc, phi_seeds=1)


def test_student_budgets_name_the_stage2_data():
    from rehyat.fidelity.report_sections import _budget_text
    from rehyat.student import StudentRecipe

    clips = {"lora": {"recipe": StudentRecipe(stage2_data="clips", stage2_steps=300).to_dict()}}
    assert "Stage 2 (flow-matching fine-tune): 300 steps × batch 4 on 512 generator clips of 48 frames" in (
        "\n".join(_budget_text(clips))
    )
    own = "\n".join(_budget_text({"lora": {"recipe": StudentRecipe().to_dict()}}))
    assert "on the student's own guided sampling states (16 generator prompts of 48 frames" in own
    assert "Stage 2b" not in own
    assert "Sampled at To=3 (trained at To=1" in own  # the shipped student's sampling overlap is stated
    same = StudentRecipe(sampling_overlap_frames=None).to_dict()
    assert "Sampled at" not in "\n".join(_budget_text({"lora": {"recipe": same}}))
    entry = {"settings": {"steps": 300, "seed": 1, "seam_weight": 2.0}, "seconds": 12.5}
    continued = {"recipe": StudentRecipe().to_dict(), "continuations": [entry]}
    text = "\n".join(_budget_text({"lora": continued}))
    assert ("Stage 2b (continued from the stage-2 LoRA file, fresh optimiser): 300 more steps on new "
            "prompts, seed 1, boundary-step loss weight 2.0; 12.5 s.") in text


def test_new_options_are_validated_and_reach_the_cli():
    with pytest.raises(ValueError, match="phi_seeds must be an integer in"):
        FidelityConfig(phi_seeds=0)
    with pytest.raises(ValueError, match="attention_trajectories must be an integer in"):
        FidelityConfig(attention_trajectories=0)
    with pytest.raises(ValueError, match="ceiling_noise must be a real number in"):
        FidelityConfig(ceiling_noise=0.0)
    identity = FidelityConfig().identity()  # section knobs are stored with their own results
    assert not {"phi_seeds", "attention_trajectories", "ceiling_noise", "student_dir"} & set(identity)
    result = subprocess.run(
        [sys.executable, "-m", "rehyat", "fidelity", "--phi-seeds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "phi_seeds must be an integer in [1, 100]" in result.stderr


def test_shipped_budgets_leave_out_every_per_step_curve():
    from rehyat.fidelity.shipped import shipped_budgets
    from rehyat.teacher.model import ASSETS

    lora = shipped_budgets(ASSETS)["lora"]
    assert "loss_curve" not in lora["stage2"]
    for entry in lora.get("continuations", []):
        assert "seam_losses" not in entry and "loss_curve" not in entry["report"]
        assert entry["report"]["last_losses"] and entry["settings"]["steps"] > 0
