"""The teacher's evaluator: scores clips against the generator's ground truth (rehyat/teacher/evaluate.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rehyat.teacher.evaluate import (
    HELD_OUT_SEED,
    STUDENT_TARGETS,
    TEACHER_TARGETS,
    classify_kind,
    detect,
    diagonal_ratio,
    held_out_pairs,
    score_clip,
    seam_ratio,
    shape_mask,
    summarise,
)
from rehyat.teacher.shapes import COLOURS, ClipSpec, ShapeState, generate_clip, render

SEEDS = range(40)


def _truth_scores(transform=lambda clip: clip.pixels, prompt=lambda clip: clip.prompt):
    return [score_clip(transform(c), prompt(c), chunk_frames=3) for c in map(generate_clip, SEEDS)]


def test_ground_truth_clips_pass_every_target():
    summary = summarise(_truth_scores(), targets=STUDENT_TARGETS)
    assert summary["all_pass"], summary
    assert summary["presence"] == 1.0 and summary["spurious_frames"] == 0.0 and summary["blank_frames"] == 0.0
    assert summary["kind_correct"] >= 0.97 and summary["kind_detections"] > 400
    assert summary["continuous_pairs"] == 1.0 and summary["moving"] == 1.0
    assert summary["seam_ratio"] == pytest.approx(1.0, abs=0.1)


def test_detector_finds_each_shape_where_the_generator_put_it():
    clip = generate_clip(5)
    found, masks = detect(clip.pixels, list(COLOURS))
    for t, shapes in enumerate(clip.truth):
        for s in shapes:
            others = [o for o in shapes if o is not s]
            if any(math.hypot(s.x - o.x, s.y - o.y) < s.radius + o.radius + 2 for o in others):
                continue
            x, y, _ = found[t][s.colour]
            assert abs(x - s.x) < 0.6 and abs(y - s.y) < 0.6
    absent = [c for c in COLOURS if c not in {s.colour for s in clip.truth[0]}]
    assert all(found[t][c] is None for t in range(len(found)) for c in absent)
    assert set(masks) == set(COLOURS)


def test_kind_from_the_diagonal_extent():
    circle = render([[ShapeState("circle", "red", 16.3, 15.7, 5.0)]], 32)
    square = render([[ShapeState("square", "red", 16.3, 15.7, 5.0)]], 32)
    circle_mask, square_mask = shape_mask(circle, "red")[0], shape_mask(square, "red")[0]
    assert diagonal_ratio(circle_mask) == pytest.approx(1.0, abs=0.1)
    assert diagonal_ratio(square_mask) == pytest.approx(math.sqrt(2), abs=0.1)
    assert classify_kind(circle_mask) == "circle" and classify_kind(square_mask) == "square"
    assert classify_kind(torch.zeros(32, 32, dtype=torch.bool)) is None


def test_blank_and_noise_clips_show_nothing():
    black = -torch.ones(3, 16, 32, 32)
    noise = torch.randn(3, 16, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    for clip in (black, noise):
        score = score_clip(clip, "a red circle and a blue square collide")
        assert score.presence == {"red": 0.0, "blue": 0.0} and score.blank_frames == 1.0
        assert score.min_presence == 0.0 and score.mean_speed is None and score.continuous_pairs is None
    summary = summarise([score_clip(black, "a red circle")])
    assert not summary["passes"]["presence"] and not summary["all_pass"]


def test_wrong_colours_are_spurious_and_missing():
    names = sorted(COLOURS)
    swap = {c: names[(i + 1) % len(names)] for i, c in enumerate(names)}
    clips = [
        c
        for c in map(generate_clip, SEEDS)
        if not {s.colour for s in c.truth[0]} & {swap[s.colour] for s in c.truth[0]}
    ]
    assert len(clips) > 20
    scores = [
        score_clip(
            render([[dataclasses.replace(s, colour=swap[s.colour]) for s in f] for f in c.truth], 32),
            c.prompt,
        )
        for c in clips
    ]
    summary = summarise(scores)
    assert summary["presence"] == 0.0 and summary["spurious_frames"] == 1.0
    assert not summary["passes"]["presence"] and not summary["passes"]["spurious"]


def test_wrong_kinds_are_counted_wrong():
    flip = {"circle": "square", "square": "circle"}

    def rekind(clip):
        return render([[dataclasses.replace(s, kind=flip[s.kind]) for s in f] for f in clip.truth], 32)

    summary = summarise(_truth_scores(rekind))
    assert summary["kind_correct"] <= 0.05 and not summary["passes"]["kind"]
    assert summary["presence"] == 1.0  # the colours are still right


def test_jumps_static_clips_and_seams():
    shuffled = summarise(
        _truth_scores(lambda c: c.pixels[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))])
    )
    assert shuffled["continuous_pairs"] < 0.8 and not shuffled["passes"]["continuous"]
    static = summarise(_truth_scores(lambda c: c.pixels[:, :1].expand(-1, 16, -1, -1)))
    assert static["mean_speed"] == 0.0 and static["moving"] == 0.0 and not static["passes"]["moving"]
    clip = generate_clip(3).pixels
    seamed = clip.clone()
    seamed[:, 3::3] = seamed[:, 3::3].roll(8, dims=-1)  # every chunk start jumps sideways
    assert seam_ratio(seamed, 3) > 2 * seam_ratio(clip, 3)
    assert seam_ratio(clip[:, :3], 3) is None  # no boundary inside
    with pytest.raises(ValueError, match="chunk_frames"):
        seam_ratio(clip, 0)


def test_refusals_and_held_out_pairs():
    with pytest.raises(ValueError, match="pixels must be a clip"):
        score_clip(torch.zeros(16, 32, 32, 3), "a red circle")
    with pytest.raises(ValueError, match="unknown words"):
        score_clip(generate_clip(0).pixels, "a purple circle")
    with pytest.raises(ValueError, match="at least one"):
        summarise([])
    pairs = held_out_pairs(5)
    assert pairs == held_out_pairs(5) and [seed for _, seed in pairs] == list(
        range(HELD_OUT_SEED, HELD_OUT_SEED + 5)
    )
    assert all(prompt == generate_clip(seed).prompt for prompt, seed in pairs)
    with pytest.raises(ValueError, match="count"):
        held_out_pairs(0)
    assert TEACHER_TARGETS.presence == 0.95 and STUDENT_TARGETS.seam_ratio == 1.25
    assert ClipSpec().max_speed == 2.0
