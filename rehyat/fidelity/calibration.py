"""Calibration rows of the fidelity table: what a PSNR to the teacher means on this teacher.

- ``floor_other_seed``: the teacher itself from another noise seed (same prompt) — a clip of the right
  content that is not *this* clip; the floor a model must beat to reproduce the teacher's clip;
- ``black``: an all-black clip (the background alone);
- ``static_mean``: per clip, the teacher clip's mean over time repeated on every frame (right colours
  and places on average, no motion);
- ``ceiling_weight_noise``: the teacher with relative noise ``w·(1 + ε·n)`` (ε = ``ceiling_noise``,
  1e-3 by default) on every DiT weight — a numerically negligible change; how far the sampler alone
  carries it is the ceiling no converted model can be expected to beat;
- ``block_causal_oracle``: the teacher with exact block-causal softmax (Tc of the headline case) in
  every block (:func:`rehyat.fidelity.oracle.block_causal_model`) — the best a chunk-causal student
  can reach.

:func:`range_shares` places every row of a run on the floor → ceiling range of PSNR.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..teacher.model import SamplingConfig, Teacher
from .oracle import block_causal_model, perturbed_model
from .scoring import cached, generate_clips, score_clips, store

FLOOR = "floor_other_seed"
BLACK = "black"
STATIC = "static_mean"
CEILING = "ceiling_weight_noise"
ORACLE = "block_causal_oracle"
ROWS: tuple[str, ...] = (FLOOR, BLACK, STATIC, CEILING, ORACLE)
OTHER_SEED_OFFSET = 900_000  # the floor's noise seeds: the held-out seeds + this (no other use of them)
CEILING_SEED = 0  # seed of the ceiling's weight noise


def label(name: str, chunk_frames: int, ceiling_noise: float) -> str:
    """The row's name in tables."""
    return {
        FLOOR: "floor: teacher, other noise seed",
        BLACK: "all-black clip",
        STATIC: "teacher's static mean frame",
        CEILING: f"ceiling: teacher, {ceiling_noise:g} relative weight noise",
        ORACLE: f"block-causal softmax oracle Tc={chunk_frames}",
    }[name]


def calibration_rows(
    teacher: Teacher,
    teacher_clips: dict[str, list[Tensor]],
    work: Path,
    eval_set: list[tuple[str, int]],
    *,
    long_frames: int,
    chunk_frames: int,
    ceiling_noise: float,
    sampling: SamplingConfig,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Every calibration row, scored like a case (cached in ``work/calibration``)."""
    short_frames = teacher.config.clip.frames
    long_set = eval_set[: len(teacher_clips["long"])]
    rows: dict[str, dict[str, Any]] = {}
    for name in ROWS:
        definition = {"row": name, "chunk_frames": chunk_frames, "other_seed_offset": OTHER_SEED_OFFSET}
        if name == CEILING:
            definition.update(ceiling_noise=ceiling_noise, seed=CEILING_SEED)
        path = work / "calibration" / f"{name}.json"
        record = cached(path, definition)
        if record is None:
            log(f"  calibration: {name} …")
            short, long = _clips(
                name,
                teacher,
                teacher_clips,
                eval_set,
                long_set,
                short_frames,
                long_frames,
                chunk_frames,
                ceiling_noise,
                sampling,
            )
            record = score_clips(teacher_clips, short, long, eval_set, chunk_frames, teacher.config.clip)
            record = store(path, definition, record)
        record["case"] = {
            "name": name,
            "group": "oracle" if name == ORACLE else "calibration",
            "label": label(name, chunk_frames, ceiling_noise),
        }
        rows[name] = record
    return rows


def _clips(
    name, teacher, teacher_clips, eval_set, long_set, short_frames, long_frames, chunk_frames, noise, sampling
) -> tuple[list[Tensor], list[Tensor]]:
    if name == BLACK:
        return [-torch.ones_like(c) for c in teacher_clips["short"]], [
            -torch.ones_like(c) for c in teacher_clips["long"]
        ]
    if name == STATIC:
        return [_static(c) for c in teacher_clips["short"]], [_static(c) for c in teacher_clips["long"]]
    if name == FLOOR:
        velocity = None
        eval_set = [(p, s + OTHER_SEED_OFFSET) for p, s in eval_set]
        long_set = eval_set[: len(long_set)]
    else:
        model = (
            perturbed_model(teacher, noise, CEILING_SEED)
            if name == CEILING
            else block_causal_model(teacher, chunk_frames)
        )
        velocity = model.dit
    return (
        generate_clips(teacher, velocity, eval_set, short_frames, sampling),
        generate_clips(teacher, velocity, long_set, long_frames, sampling),
    )


def _static(clip: Tensor) -> Tensor:
    """``(3, T, H, W)`` → its mean over time on every frame."""
    return clip.float().mean(dim=1, keepdim=True).expand_as(clip).contiguous()


def all_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every scored row of a run by name: grid cases, calibration rows, other φ seeds, shipped student."""
    rows = dict(summary.get("cases", {}))
    rows.update(summary.get("calibration", {}))
    rows.update(summary.get("phi_seeds", {}).get("runs", {}))
    rows.update(summary.get("student", {}).get("rows", {}))
    return rows


def _mean(record: dict[str, Any], kind: str) -> float | None:
    entry = record.get("summary", {}).get(kind, {}).get("psnr_db")
    return None if entry is None else entry.get("mean")


def range_shares(summary: dict[str, Any]) -> dict[str, Any]:
    """Each row's mean PSNR as a share of the floor → ceiling range, ``(psnr − floor) / (ceiling − floor)``
    (0: no better than another seed of the teacher; 1: as close as the noise ceiling), per clip length.

    Returns ``{"floor": {kind: dB}, "ceiling": {kind: dB}, "rows": {name: {kind: share}}}``; a share is
    None where a mean is missing or the range is empty.
    """
    calibration = summary.get("calibration", {})
    out: dict[str, Any] = {"floor": {}, "ceiling": {}, "rows": {}}
    for kind in ("short", "long"):
        out["floor"][kind] = _mean(calibration.get(FLOOR, {}), kind)
        out["ceiling"][kind] = _mean(calibration.get(CEILING, {}), kind)
    for name, record in all_rows(summary).items():
        shares = {}
        for kind in ("short", "long"):
            value, low, high = _mean(record, kind), out["floor"][kind], out["ceiling"][kind]
            ok = value is not None and low is not None and high is not None and high - low > 1e-9
            shares[kind] = (value - low) / (high - low) if ok else None
        out["rows"][name] = shares
    return out
