"""Scoring one row of the fidelity table: clips of a model (or a stand-in) against the teacher's clips.

Every row — a grid case, a calibration row, another φ seed, the shipped student — is a record of the
same form (:func:`score_clips`), so the report treats them alike; :func:`cached` / :func:`store` keep
each finished record in the run's work folder, keyed by what it depends on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..atomic import atomic_write_bytes
from ..teacher.model import SamplingConfig, Teacher
from ..teacher.shapes import ClipSpec
from . import clip_metrics


def generate_clips(
    teacher: Teacher, velocity, pairs: list[tuple[str, int]], frames: int, sampling: SamplingConfig
) -> list[Tensor]:
    """One clip ``(3, frames, H, W)`` per (prompt, seed) with ``velocity`` (None: the teacher)."""
    return [
        teacher.generate(prompt, frames, seed, velocity=velocity, sampling=sampling) for prompt, seed in pairs
    ]


def score_clips(
    teacher_clips: dict[str, list[Tensor]],
    short: list[Tensor],
    long: list[Tensor],
    eval_set: list[tuple[str, int]],
    chunk_frames: int,
    spec: ClipSpec | None = None,
) -> dict[str, Any]:
    """The per-clip metrics of a row against the teacher's clips of the same prompts and seeds.

    Returns ``{"short": [...], "long": [...], "chunks": {...}, "content": {...}, "summary": {...}}``:
    per-clip PSNR / cosine / flicker / seam error (and the long clips' ground-truth content), PSNR per
    chunk of ``chunk_frames`` frames, the content measures pooled at each length
    (:func:`clip_metrics.pooled_content`) and mean ± standard error of every per-clip metric.
    """
    prompts = [prompt for prompt, _ in eval_set]
    tc = chunk_frames
    record: dict[str, Any] = {
        "short": [
            clip_metrics.against_teacher(t, c, tc) for t, c in zip(teacher_clips["short"], short, strict=True)
        ],
        "long": [
            {**clip_metrics.against_teacher(t, c, tc), **clip_metrics.content(c, prompt, spec)}
            for t, c, prompt in zip(teacher_clips["long"], long, prompts, strict=False)
        ],
        "chunks": {
            "chunk_frames": tc,
            "short": [
                clip_metrics.chunk_psnr(t, c, tc) for t, c in zip(teacher_clips["short"], short, strict=True)
            ],
            "long": [
                clip_metrics.chunk_psnr(t, c, tc) for t, c in zip(teacher_clips["long"], long, strict=False)
            ],
        },
        "content": {
            "short": clip_metrics.pooled_content(short, prompts, spec, tc),
            "long": clip_metrics.pooled_content(long, prompts, spec, tc),
        },
    }
    record["summary"] = summarise(record)
    return record


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Mean ± standard error of every per-clip metric of a case, for short and long clips."""
    out = {}
    for kind in ("short", "long"):
        rows = record.get(kind) or []
        keys = sorted({k for row in rows for k in row})
        out[kind] = {k: clip_metrics.mean_and_sem([row.get(k) for row in rows]) for k in keys}
    return out


def cached(path: Path, definition: dict[str, Any]) -> dict[str, Any] | None:
    """The record stored at ``path`` when it was made for ``definition`` (else None: recompute)."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    return stored if stored.get("definition") == definition else None


def store(path: Path, definition: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` with its ``definition`` to ``path`` (atomically); returns the stored record."""
    stored = {**record, "definition": definition}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
    return stored
