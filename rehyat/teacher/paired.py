"""Paired comparison of two evaluations on the same held-out clips, with bootstrap intervals.

Two models scored on the same prompt/seed pairs (``python -m rehyat evaluate --out``) differ clip by
clip far less than their pooled figures suggest: a hard prompt is hard for both. :func:`paired_differences`
takes the per-clip scores of both (the ``per_clip`` lists :func:`rehyat.student.evaluation.evaluate_model`
writes), pairs them clip by clip and reports, per measure, the mean of ``ours − reference`` with a
percentile bootstrap interval over clips (clips resampled with replacement; a clip's frame pairs are
correlated, so the clip is the unit). An interval that contains 0 says the two models cannot be told
apart on these clips; "at least as good" needs the mean difference ≥ 0, not only an interval
reaching it.

Per-clip measures (each clip weighs the same): ``presence`` (the mean over the clip's prompted
colours), ``continuous_pairs``, ``kind_correct``, ``seam_ratio``, ``blank_frames``,
``spurious_frames``. A clip where either side has no value of a measure (no detection, no seam)
drops out of that measure only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

MEASURES: tuple[str, ...] = (
    "presence", "continuous_pairs", "kind_correct", "seam_ratio", "blank_frames", "spurious_frames",
)
CONFIDENCE = 0.95


def clip_measure(clip: Mapping[str, Any], measure: str) -> float | None:
    """One per-clip value of ``measure`` from a ``per_clip`` entry (None: not measured)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
    if measure == "presence":
        shares = list((clip.get("presence") or {}).values())
        return sum(shares) / len(shares) if shares else None
    value = clip.get(measure)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def check_pairing(ours: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]) -> None:
    """Refuse ``reference`` unless its first ``len(ours)`` clips have ``ours``' prompts and frames."""
    if not ours:
        raise ValueError("ours must hold at least one clip score")
    if len(reference) < len(ours):
        raise ValueError(
            f"reference has {len(reference)} clips but ours has {len(ours)}: evaluate the reference on at "
            "least as many held-out pairs"
        )
    for index, (a, b) in enumerate(zip(ours, reference, strict=False)):
        if a.get("prompt") != b.get("prompt") or a.get("frames") != b.get("frames"):
            raise ValueError(
                f"clip {index} differs: ours is {a.get('prompt')!r} at {a.get('frames')} frames, the "
                f"reference {b.get('prompt')!r} at {b.get('frames')} frames — compare evaluations of the "
                "same held-out pairs at the same --frames"
            )


def bootstrap_interval(
    differences: Sequence[float], *, resamples: int = 10_000, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampled with replacement)."""
    if not differences:
        raise ValueError("differences must hold at least one value")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an integer ≥ 1; got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence!r}")
    rng, n = random.Random(seed), len(differences)
    means = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    low = means[min(resamples - 1, int(math.floor(tail * resamples)))]
    high = means[min(resamples - 1, int(math.ceil((1.0 - tail) * resamples)) - 1)]
    return low, high


def paired_differences(
    ours: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per measure: mean of ``ours − reference`` over paired clips and its bootstrap interval.

    Args:
        ours: ``per_clip`` scores of the model under test.
        reference: ``per_clip`` scores of the reference on the same held-out pairs, in the same order
            (it may hold more clips: its first ``len(ours)`` are used).
        resamples: bootstrap resamples.
        seed: the bootstrap's seed (the result is deterministic).

    Returns:
        ``{"clips": n, "confidence": 0.95, "measures": {name: {"ours", "reference", "difference",
        "low", "high", "clips"}}}`` — ``ours``/``reference`` are the per-clip means over the clips
        both measured.
    """
    check_pairing(ours, reference)
    measures: dict[str, Any] = {}
    for measure in MEASURES:
        values = [
            (clip_measure(x, measure), clip_measure(y, measure))
            for x, y in zip(ours, reference, strict=False)
        ]
        pairs = [(a, b) for a, b in values if a is not None and b is not None]
        if not pairs:
            continue
        differences = [a - b for a, b in pairs]
        low, high = bootstrap_interval(differences, resamples=resamples, seed=seed)
        measures[measure] = {
            "ours": sum(a for a, _ in pairs) / len(pairs),
            "reference": sum(b for _, b in pairs) / len(pairs),
            "difference": sum(differences) / len(differences),
            "low": low,
            "high": high,
            "clips": len(pairs),
        }
    return {"clips": len(ours), "confidence": CONFIDENCE, "resamples": resamples, "measures": measures}


__all__ = ["MEASURES", "bootstrap_interval", "check_pairing", "clip_measure", "paired_differences"]
