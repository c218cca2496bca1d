"""Score a named model (the teacher or a shipped student) on held-out prompt/seed pairs."""

from __future__ import annotations

from typing import Any

from ..teacher.evaluate import TEACHER_TARGETS, Targets, held_out_pairs, score_clip, summarise
from .generate import check_frames, load_model


def evaluate_model(
    model: str,
    *,
    clips: int = 48,
    frames: int = 16,
    folder=None,
    chunk_frames: int | None = 3,
    targets: Targets = TEACHER_TARGETS,
    on_clip=None,
) -> dict[str, Any]:
    """Generate ``clips`` held-out clips of ``frames`` frames with ``model`` and pool their scores.

    Clips come from :func:`rehyat.student.generate.load_model` (the same models as the CLI's and
    the demo's generator), one per :func:`held_out_pairs` pair. ``on_clip(index, score)`` reports
    progress.
    """
    check_frames(frames)
    teacher, velocity = load_model(model, folder)
    scores = []
    for index, (prompt, seed) in enumerate(held_out_pairs(clips)):
        pixels = teacher.generate(prompt, frames, seed, velocity=velocity)
        scores.append(score_clip(pixels, prompt, teacher.config.clip, chunk_frames))
        if on_clip is not None:
            on_clip(index, scores[-1])
    summary = summarise(scores, teacher.config.clip, targets)
    return {"model": model, "frames": frames, **summary, "per_clip": [s.to_dict() for s in scores]}
