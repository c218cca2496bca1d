"""Per-block attention error of the headline case's φ — the primary stage-1 evidence of the table.

:func:`rehyat.student.attention_error.attention_errors` recomputes every captured self-attention of
held-out teacher trajectories (seeds of :func:`rehyat.teacher.evaluate.held_out_pairs`, whose scenes
the fidelity distillation never sees) with: the untrained φ, the headline case's φ of every φ seed,
the shipped stage-1 φ when it fits the same Tc / To, the windowed softmax (no linear part) and the
exact block-causal softmax oracle; *gap closed* is the share of the windowed → oracle gap a φ closes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..hybrid import HybridAttention
from ..models.wan_rehyat import convert, converted_blocks, load_phi, set_overlap_frames
from ..student.attention_error import attention_errors
from ..teacher.model import SamplingConfig, Teacher
from ..weights import load_phi_weights
from .cases import FidelityCase
from .scoring import cached, store
from .shipped import file_digest

UNTRAINED = "untrained φ"
SHIPPED = "shipped stage-1 φ"
UNTRAINED_SEED = 0
GAP_TARGET = 0.6  # issue 18: stage 1 closes ≥ 60 % of the windowed → oracle gap, averaged over blocks


def seed_label(seed: int) -> str:
    """The attention-error case name of the headline φ from ``seed``."""
    return f"φ seed {seed}"


def _untrained(teacher: Teacher, case: FidelityCase) -> dict[int, HybridAttention]:
    model = copy.deepcopy(teacher)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        convert(model.dit, case.conversion(teacher.config.dit.num_layers))
    return converted_blocks(model.dit)


def _from_file(teacher: Teacher, path: Path, overlap_frames: int) -> dict[int, HybridAttention]:
    """The φ modules of the file at ``path``, run at ``overlap_frames`` (the To they were trained at)."""
    model = copy.deepcopy(teacher)
    load_phi(model.dit, path)
    set_overlap_frames(model.dit, overlap_frames)
    return converted_blocks(model.dit)


def trained_attention(path: str | Path) -> dict[str, Any]:
    """Tc, To and causality the φ file at ``path`` was *trained* with.

    A student's φ file records the To it samples with (``StudentRecipe.sampling_overlap_frames``);
    the recipe in its training record says the To both stages trained at, which is what φ fits.
    Files without a recipe: their recorded conversion.
    """
    phi = load_phi_weights(path)
    attention = phi.config.attention
    trained = {name: getattr(attention, name) for name in ("chunk_frames", "overlap_frames", "causal")}
    recipe = (phi.training or {}).get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("overlap_frames"), int):
        trained["overlap_frames"] = recipe["overlap_frames"]
    return trained


def _fits(path: Path, case: FidelityCase) -> str | None:
    """Why the φ file at ``path`` does not fit ``case``'s attention (None when it does)."""
    trained = trained_attention(path)
    mine = case.attention
    for name, theirs in trained.items():
        if theirs != getattr(mine, name):
            return f"trained with {name}={theirs!r}, the headline case has {getattr(mine, name)!r}"
    return None


def attention_section(
    teacher: Teacher,
    work: Path,
    case: FidelityCase,
    seed_files: dict[int, Path],
    *,
    shipped_phi: Path | None,
    trajectories: int,
    trajectory_steps: int,
    sampling: SamplingConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Attention errors per block (cached in ``work/attention_error.json``).

    Args:
        teacher: the softmax teacher.
        work: the run's work folder.
        case: the headline case (its Tc and To are the reference cases').
        seed_files: φ seed → the headline φ file distilled from it.
        shipped_phi: the shipped stage-1 φ file (None or missing: not included).
        trajectories, trajectory_steps: held-out trajectories and their Euler steps.
        sampling: the teacher's guidance and shift.
    """
    skipped: dict[str, str] = {}
    files = {seed_label(s): p for s, p in sorted(seed_files.items())}
    if shipped_phi is not None and shipped_phi.is_file():
        try:
            reason = _fits(shipped_phi, case)
        except ValueError as err:
            reason = f"unreadable: {err}"
        if reason is None:
            files[SHIPPED] = shipped_phi
        else:
            skipped[SHIPPED] = reason
    elif shipped_phi is not None:
        skipped[SHIPPED] = f"{shipped_phi.name} absent from {shipped_phi.parent}"
    definition = {
        "trajectories": trajectories,
        "trajectory_steps": trajectory_steps,
        "chunk_frames": case.attention.chunk_frames,
        "overlap_frames": case.attention.overlap_frames,
        "untrained_seed": UNTRAINED_SEED,
        "phi": {name: file_digest(path) for name, path in files.items()},
    }
    path = work / "attention_error.json"
    record = cached(path, definition)
    if record is not None:
        return record
    modules: dict[str, dict[int, HybridAttention]] = {UNTRAINED: _untrained(teacher, case)}
    for name, phi in files.items():
        try:
            modules[name] = _from_file(teacher, phi, case.attention.overlap_frames)
        except ValueError as err:  # e.g. the shipped φ was made for another teacher
            skipped[name] = f"could not load: {err}"
    log(f"  attention error: {len(modules)} φ sets on {trajectories} held-out trajectories …")
    result = attention_errors(
        teacher,
        modules,
        chunk_frames=case.attention.chunk_frames,
        overlap_frames=case.attention.overlap_frames,
        trajectories=trajectories,
        trajectory_steps=trajectory_steps,
        sampling=sampling,
    )
    seeds = [seed_label(s) for s in sorted(seed_files) if seed_label(s) in modules]
    closed = [result["gap_closed"][name] for name in seeds if result["gap_closed"].get(name) is not None]
    result.update(
        headline=case.name,
        seeds=seeds,
        gap_closed_over_seeds=_spread(closed),
        gap_target=GAP_TARGET,
        skipped=skipped,
    )
    return store(path, definition, result)


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(values)}
