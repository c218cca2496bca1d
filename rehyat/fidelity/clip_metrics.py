"""Metrics of a generated clip against the teacher's clip and against the generator's ground truth.

Clips are pixels ``(3, T, H, W)`` in [-1, 1] (the teacher's output). The teacher has no temporal
compression, so latent frame = pixel frame and chunk boundaries fall on frames ``Tc, 2·Tc, …``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..metrics import psnr_clip, seam_report, temporal_flicker
from ..teacher.evaluate import STUDENT_TARGETS, score_clip
from ..teacher.evaluate import summarise as summarise_scores
from ..teacher.shapes import ClipSpec


def to_unit_frames(pixels: Tensor) -> Tensor:
    """``(3, T, H, W)`` in [-1, 1] → ``(T, H, W, 3)`` in [0, 1] (black background = 0)."""
    return ((pixels.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)


def content_cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two clips' [0, 1] RGB (black = 0, so only the shapes count)."""
    x, y = to_unit_frames(a).flatten().double(), to_unit_frames(b).flatten().double()
    norms = x.norm() * y.norm()
    if norms == 0:
        return 1.0 if x.norm() == y.norm() else 0.0
    return float(x @ y / norms)


def against_teacher(teacher: Tensor, clip: Tensor, chunk_frames: int) -> dict[str, float | None]:
    """PSNR (dB), content cosine, flicker ratio and seam error ratio of ``clip`` against ``teacher``.

    ``flicker_ratio``: the clip's temporal flicker over the teacher's (1 = as steady).
    ``seam_ratio``: mean per-frame error on the frames either side of a chunk boundary over the
    error elsewhere (> 1: errors concentrate at chunk seams); None when no boundary is inside.
    """
    a, b = to_unit_frames(teacher), to_unit_frames(clip)
    seams = seam_report(a, b, chunk_frames, temporal_factor=1)
    flicker_teacher = temporal_flicker(a)
    result = {
        "psnr_db": psnr_clip(b, a),
        "cosine": content_cosine(teacher, clip),
        "flicker_ratio": temporal_flicker(b) / flicker_teacher if flicker_teacher > 0 else math.nan,
        "seam_ratio": seams.error_ratio,
    }
    return {k: (v if math.isfinite(v) else None) for k, v in result.items()}


def content(clip: Tensor, prompt: str, spec: ClipSpec | None = None) -> dict[str, float | None]:
    """What the generator's ground truth says a clip of ``prompt`` must show (the teacher's evaluator,
    :func:`rehyat.teacher.evaluate.score_clip`), in the table's terms.

    - ``shapes_found``: share of (frame, prompt colour) pairs in which the colour's shape is detected;
    - ``spurious``: share of frames showing a colour the prompt did not ask for;
    - ``motion_plausible``: share of consecutive detections of a prompt colour whose centroid moves
      at most ``2 × max_speed`` pixels; None without consecutive detections;
    - ``kind_correct``: share of classified detections of the right kind (circle / square).
    """
    score = score_clip(clip, prompt, spec)
    found = sum(score.presence.values()) / len(score.presence) if score.presence else None
    return {
        "shapes_found": found,
        "spurious": score.spurious_frames,
        "motion_plausible": score.continuous_pairs,
        "kind_correct": score.kind_correct,
    }


def chunk_psnr(teacher: Tensor, clip: Tensor, chunk_frames: int) -> list[float | None]:
    """PSNR (dB) of ``clip`` against ``teacher`` per chunk of ``chunk_frames`` frames (the last chunk may be
    shorter); identical chunks give None (infinite PSNR)."""
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be an integer ≥ 1; got {chunk_frames!r}")
    a, b = to_unit_frames(teacher), to_unit_frames(clip)  # (T, H, W, 3)
    out: list[float | None] = []
    for start in range(0, a.shape[0], chunk_frames):
        value = psnr_clip(b[start : start + chunk_frames], a[start : start + chunk_frames])
        out.append(value if math.isfinite(value) else None)
    return out


def pooled_content(
    clips: list[Tensor], prompts: list[str], spec: ClipSpec | None, chunk_frames: int | None
) -> dict[str, Any] | None:
    """The clips' content measures pooled by :func:`rehyat.teacher.evaluate.summarise` against the
    student targets (presence, kind, spurious, continuity, blank frames, seam ratio on the Tc grid);
    None without clips."""
    if not clips:
        return None
    scores = [score_clip(c, p, spec, chunk_frames) for c, p in zip(clips, prompts, strict=False)]
    return summarise_scores(scores, spec, STUDENT_TARGETS)


def mean_and_sem(values: list[float | None]) -> dict[str, Any]:
    """Mean and standard error of the finite values (None when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sem": None, "n": 0}
    t = torch.tensor(finite, dtype=torch.float64)
    sem = float(t.std(unbiased=True) / math.sqrt(len(finite))) if len(finite) > 1 else None
    return {"mean": float(t.mean()), "sem": sem, "n": len(finite)}
