"""FLOP accounting: analytic counts for softmax and ReHyAt attention, and a flop-counter hook.

``torch.utils.flop_counter`` has formulas for the CUDA SDPA kernels but none for the CPU flash
kernel (``aten._scaled_dot_product_flash_attention_for_cpu``); :func:`register_cpu_flash_flop_formula`
adds it (idempotent) so counted and analytic FLOPs can be compared on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils import flop_counter

from .config import FeatureMapConfig, require_int
from .ops.layout import chunk_layout

_CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
LinearAccounting = Literal["incremental", "paper"]
LINEAR_ACCOUNTINGS: tuple[str, ...] = ("incremental", "paper")


def register_cpu_flash_flop_formula() -> bool:
    """Teach ``FlopCounterMode`` the CPU flash-attention kernel (forward and backward).

    Returns True when a formula was added, False when torch already had one.
    """
    aten = torch.ops.aten
    forward = getattr(aten, _CPU_FLASH)
    backward = getattr(aten, _CPU_FLASH + "_backward")
    if forward in flop_counter.flop_registry:
        return False

    @flop_counter.register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(backward)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                      **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                                         value_shape)

    return True


def softmax_attention_flops(batch: int, heads: int, tokens: int, head_dim: int) -> int:
    """Forward FLOPs of full softmax attention: ``QKᵀ`` and ``AV``, 2 FLOPs per multiply-add."""
    return 4 * batch * heads * tokens * tokens * head_dim


@dataclass(frozen=True)
class ReHyAtFlops:
    """Forward FLOP breakdown of one ReHyAt attention call (multiply-adds × 2)."""

    softmax: int
    feature_maps: int
    linear: int

    @property
    def total(self) -> int:
        """All counted FLOPs."""
        return self.softmax + self.feature_maps + self.linear


def rehyat_attention_flops(
    batch: int, heads: int, frames: int, tokens_per_frame: int, head_dim: int, *,
    chunk_frames: int, overlap_frames: int, feature_map: FeatureMapConfig | None = None,
    causal: bool = True, linear_accounting: LinearAccounting = "incremental",
) -> ReHyAtFlops:
    """Analytic forward FLOPs of the parallel / recurrent form (matmuls only, like the counter).

    Feature maps run on the queries of chunks that have a linear set and on the keys that enter S;
    the linear part is one ``φkᵀ[v, 1]`` per absorbed key and one ``φq·[S, z]`` per reading query.

    ``linear_accounting="paper"`` instead counts the kernel the paper's block TFLOPs imply (see
    docs/compute.md): φq and φk on every token, and ``S, z`` rebuilt from scratch for every chunk
    (``Σ_t |L_t|`` key absorptions instead of one per key) — not what :mod:`rehyat.ops` does.
    """
    if linear_accounting not in LINEAR_ACCOUNTINGS:
        raise ValueError(f"linear_accounting must be one of {LINEAR_ACCOUNTINGS}; got {linear_accounting!r}")
    fm = feature_map or FeatureMapConfig()
    p, d, dp = tokens_per_frame, head_dim, fm.feature_dim
    per_token_phi = 2 * (d * fm.hidden_dim + fm.hidden_dim * dp)
    softmax = reading = 0
    absorbed_frames = summed_frames = 0
    for chunk in chunk_layout(frames, chunk_frames, overlap_frames):
        n_q = (chunk.frame_end - chunk.frame_start) * p
        softmax += 4 * n_q * (chunk.window_end - chunk.window_start) * p * d
        has_linear = chunk.window_start > 0 or (not causal and chunk.window_end < frames)
        reading += n_q if has_linear else 0
        absorbed_frames = max(absorbed_frames, chunk.window_start)
        linear_set = frames - (chunk.window_end - chunk.window_start) if not causal else chunk.window_start
        summed_frames += linear_set
    if not causal and reading:
        absorbed_frames = frames
    absorbed = absorbed_frames * p
    feature_maps = per_token_phi * (reading + absorbed)
    summed = absorbed
    if linear_accounting == "paper" and reading:
        feature_maps = per_token_phi * 2 * frames * p
        summed = summed_frames * p
    linear = 2 * dp * (d + 1) * (reading + summed)
    scale = batch * heads
    return ReHyAtFlops(softmax * scale, feature_maps * scale, linear * scale)


def uniform_hybrid_attention_flops(
    batch: int, heads: int, tokens: int, head_dim: int, *, rate: int,
    feature_map: FeatureMapConfig | None = None, linear_accounting: LinearAccounting = "incremental",
) -> ReHyAtFlops:
    """Analytic forward FLOPs of a uniform hybrid ("Attention Surgery style") attention, rate R.

    Every query attends with softmax to a uniformly subsampled ``ceil(N / R)`` of the keys (every
    R-th token) and with linear attention (φq, φk) to all other keys, jointly normalised like
    ReHyAt. Counted like :func:`rehyat_attention_flops`: ``QKᵀ`` and ``AV`` over the softmax keys,
    φq on every query, φk on every linear key, one ``φkᵀ[v, 1]`` per linear key and one
    ``φq·[S, z]`` per query. ``rate=1`` is plain softmax attention (no linear part).
    ``linear_accounting="paper"`` runs φk on every key (as the paper's counts imply), not only the
    linear ones.
    """
    if linear_accounting not in LINEAR_ACCOUNTINGS:
        raise ValueError(f"linear_accounting must be one of {LINEAR_ACCOUNTINGS}; got {linear_accounting!r}")
    for name, value in (("batch", batch), ("heads", heads), ("tokens", tokens), ("head_dim", head_dim),
                        ("rate", rate)):
        require_int(name, value, low=1)
    fm = feature_map or FeatureMapConfig()
    d, dp = head_dim, fm.feature_dim
    softmax_keys = -(-tokens // rate)
    linear_keys = tokens - softmax_keys
    softmax = 4 * tokens * softmax_keys * d
    reading = tokens if linear_keys else 0
    per_token_phi = 2 * (d * fm.hidden_dim + fm.hidden_dim * dp)
    phi_keys = tokens if linear_accounting == "paper" and linear_keys else linear_keys
    feature_maps = per_token_phi * (reading + phi_keys)
    linear = 2 * dp * (d + 1) * (reading + linear_keys)
    scale = batch * heads
    return ReHyAtFlops(softmax * scale, feature_maps * scale, linear * scale)


def linear_attention_flops(
    batch: int, heads: int, tokens: int, head_dim: int, *, feature_map: FeatureMapConfig | None = None,
) -> ReHyAtFlops:
    """Analytic forward FLOPs of linear-only attention (Hedgehog style, :mod:`rehyat.ops.linear_only`).

    φq on every query and φk on every key, one ``φkᵀ[v, 1]`` per key and one ``φq·[S, z]`` per
    query; no softmax part.
    """
    for name, value in (("batch", batch), ("heads", heads), ("tokens", tokens), ("head_dim", head_dim)):
        require_int(name, value, low=1)
    fm = feature_map or FeatureMapConfig()
    per_token_phi = 2 * (head_dim * fm.hidden_dim + fm.hidden_dim * fm.feature_dim)
    scale = batch * heads
    return ReHyAtFlops(
        softmax=0,
        feature_maps=per_token_phi * 2 * tokens * scale,
        linear=2 * fm.feature_dim * (head_dim + 1) * 2 * tokens * scale,
    )
