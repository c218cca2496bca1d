"""Paired comparison of evaluations (rehyat/teacher/paired.py) and ``evaluate --compare``."""

from __future__ import annotations

import json
import math

import pytest

from rehyat.cli import main
from rehyat.teacher.evaluate import held_out_pairs
from rehyat.teacher.paired import (
    MEASURES,
    bootstrap_interval,
    check_pairing,
    clip_measure,
    paired_differences,
)


def clip(prompt: str, continuous: float | None, presence: dict[str, float], seam: float = 1.0) -> dict:
    """A ``per_clip`` entry as :meth:`ClipScore.to_dict` writes it."""
    return {
        "prompt": prompt, "frames": 8, "presence": presence, "spurious_frames": 0.0, "kind_correct": None,
        "kind_detections": 0, "mean_speed": 1.0, "continuous_pairs": continuous, "blank_frames": 0.0,
        "seam_ratio": seam, "min_presence": min(presence.values()) if presence else None,
    }


def test_clip_measure_reads_each_measure():
    entry = clip("a red circle and a blue square collide", 0.75, {"red": 1.0, "blue": 0.5}, seam=math.inf)
    assert clip_measure(entry, "presence") == 0.75  # mean over the prompted colours
    assert clip_measure(entry, "continuous_pairs") == 0.75
    assert clip_measure(entry, "kind_correct") is None  # nothing classified
    assert clip_measure(entry, "seam_ratio") is None  # not finite: not measured
    assert clip_measure(clip("", None, {}), "presence") is None
    with pytest.raises(ValueError, match="measure must be one of"):
        clip_measure(entry, "psnr")


def naive_interval(values: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """The same percentile bootstrap written out with explicit index lists (the reference)."""
    import random

    rng, n, means = random.Random(seed), len(values), []
    for _ in range(resamples):
        indices = [rng.randrange(n) for _ in range(n)]
        means.append(sum(values[i] for i in indices) / n)
    means.sort()
    return means[int(0.025 * resamples)], means[math.ceil(0.975 * resamples) - 1]


def test_bootstrap_interval_matches_the_reference_and_brackets_the_mean():
    values = [0.1, -0.3, 0.0, 0.25, -0.05, 0.4, -0.2, 0.05]
    low, high = bootstrap_interval(values, resamples=2000, seed=3)
    assert (low, high) == naive_interval(values, 2000, 3)
    assert low < sum(values) / len(values) < high
    assert bootstrap_interval([0.2] * 5, resamples=50) == (0.2, 0.2)  # no spread, no interval
    again = bootstrap_interval(values, resamples=500, seed=1)
    assert bootstrap_interval(values, resamples=500, seed=1) == again  # deterministic for a seed
    for bad, match in (({"resamples": 0}, "resamples"), ({"confidence": 1.0}, "confidence")):
        with pytest.raises(ValueError, match=match):
            bootstrap_interval(values, **bad)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_interval([])


def test_paired_differences_pair_clip_by_clip():
    prompts = ["a red circle bounces", "a blue square bounces", "a green circle bounces"]
    rows = zip(prompts, (1.0, 0.9, None), (1.2, 1.1, 1.3), strict=True)
    ours = [clip(p, c, {"x": 1.0}, seam=s) for p, c, s in rows]
    reference = [clip(p, c, {"x": 1.0}) for p, c in zip(prompts, (0.8, 1.0, 0.7), strict=True)]
    reference.append(clip("a red square bounces", 0.0, {"x": 0.0}))  # extra reference clips are unused
    result = paired_differences(ours, reference, resamples=200)
    continuity = result["measures"]["continuous_pairs"]
    assert result["clips"] == 3 and continuity["clips"] == 2  # the clip ours did not measure drops out
    assert continuity["difference"] == pytest.approx(((1.0 - 0.8) + (0.9 - 1.0)) / 2)
    assert continuity["ours"] == pytest.approx(0.95) and continuity["reference"] == pytest.approx(0.9)
    assert continuity["low"] <= continuity["difference"] <= continuity["high"]
    seam = result["measures"]["seam_ratio"]
    assert seam["difference"] == pytest.approx(0.2) and seam["low"] > 0  # worse on every clip
    assert result["measures"]["presence"]["difference"] == 0.0
    assert "kind_correct" not in result["measures"]  # measured on no clip
    assert set(result["measures"]) <= set(MEASURES)


def test_pairing_is_refused_on_other_clips():
    ours = [clip("a red circle bounces", 1.0, {"red": 1.0})]
    with pytest.raises(ValueError, match="clip 0 differs"):
        check_pairing(ours, [clip("a blue circle bounces", 1.0, {"blue": 1.0})])
    with pytest.raises(ValueError, match="at least as many"):
        check_pairing(ours * 2, ours)
    with pytest.raises(ValueError, match="at least one"):
        paired_differences([], ours)


def test_evaluate_compare_adds_paired_differences(tmp_path, capsys):
    first = tmp_path / "first.json"
    assert main(["evaluate", "--clips", "3", "--frames", "4", "--out", str(first)]) == 0
    capsys.readouterr()
    second = tmp_path / "second.json"
    flags = ["--clips", "2", "--frames", "4", "--compare", str(first), "--out", str(second)]
    assert main(["evaluate", *flags]) == 0
    paired = json.loads(capsys.readouterr().out)["paired"]
    assert paired["reference"] == "teacher" and paired["clips"] == 2
    for measure in paired["measures"].values():  # the same model on the same pairs: no difference
        assert measure["difference"] == 0.0 and measure["low"] == measure["high"] == 0.0
    assert json.loads(second.read_text())["paired"] == paired


@pytest.mark.parametrize(
    ("flags", "match"),
    [(["--frames", "5"], "at 5 frames"), (["--clips", "4"], "at least as many")],
)
def test_evaluate_compare_refuses_other_pairs_before_generating(tmp_path, capsys, flags, match):
    reference = tmp_path / "reference.json"  # the right prompts: only the flag under test differs
    planned = [{"prompt": prompt, "frames": 4} for prompt, _ in held_out_pairs(3)]
    reference.write_text(json.dumps({"model": "teacher", "frames": 4, "per_clip": planned}))
    args = {"--clips": "3", "--frames": "4"}
    args.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    with pytest.raises(SystemExit):
        main(["evaluate", *[x for kv in args.items() for x in kv], "--compare", str(reference)])
    err = capsys.readouterr().err
    assert "--compare" in err and match in err
    assert "clip 1/" not in err  # refused before the first clip was generated
