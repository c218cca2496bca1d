"""Sampler accounting of a streaming run: model evaluations per step and conditionings per evaluation.

The streaming state store holds one state per (evaluation within a chunk's sampler run,
conditioning, batch item, block); these two counts give its first two factors. Used by the ComfyUI
chunked sampler's size estimate (``nodes/sampling_comfy.py``) and by the memory planner
(:mod:`rehyat.planning`), so both report the same figure.
"""

from __future__ import annotations

from collections.abc import Mapping

# Model evaluations per step of samplers that evaluate more than once (every other sampler: 1).
EVALUATIONS_PER_STEP: dict[str, int] = {
    "heun": 2, "heunpp2": 3, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2,
    "dpmpp_2s_ancestral_cfg_pp": 2, "dpmpp_sde": 2, "dpmpp_sde_gpu": 2, "seeds_2": 2, "seeds_3": 3,
    "exp_heun_2_x0": 2,
}


def evaluations_per_step(sampler_name: str) -> int:
    """Model evaluations one step of ``sampler_name`` makes (ComfyUI's sampler names; unknown: 1)."""
    return EVALUATIONS_PER_STEP.get(sampler_name, 1)


def conditionings_per_evaluation(cfg: float, cond_counts: Mapping[str, int] | None = None) -> int:
    """Conditionings each model evaluation runs: cond + uncond with CFG, cond only at ``cfg == 1``.

    Args:
        cfg: the guidance scale (ComfyUI skips the uncond pass at exactly 1.0).
        cond_counts: entries per conditioning name (``{"positive": 1, "negative": 1}``) when known;
            None assumes one positive and one negative.
    """
    if cfg == 1.0:
        return max(1, (cond_counts or {}).get("positive", 1))
    if not cond_counts:
        return 2
    return max(1, sum(cond_counts.values()))
