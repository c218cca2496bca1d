"""Compute of each fidelity case: self-attention FLOPs as a share of the softmax model's.

Counted analytically (:mod:`rehyat.flops`, the profiler's accounting) for two shapes:

- the embedded teacher at the long evaluation length (at its training length, 16 frames of 64 tokens,
  φ's MLP outweighs the small softmax and ReHyAt costs more than softmax; at 64 frames it is cheaper);
- Wan2.1-1.3B at 81 video frames, 480×832 (21 latent frames × 30×52 tokens), where the method is
  meant to run; a case converting ``c`` of the teacher's ``L`` blocks converts
  ``round(30·c/L)`` (halves rounded up) of Wan's 30 there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..baselines import BaselineAttentionConfig
from ..config import HybridAttentionConfig
from ..flops import (
    linear_attention_flops,
    rehyat_attention_flops,
    softmax_attention_flops,
    uniform_hybrid_attention_flops,
)
from .cases import FidelityCase


@dataclass(frozen=True)
class AttentionShape:
    """What self-attention FLOPs depend on: blocks, heads × head_dim, frames × tokens per frame."""

    name: str
    num_blocks: int
    num_heads: int
    head_dim: int
    frames: int
    tokens_per_frame: int


WAN_1_3B_81_FRAMES = AttentionShape("Wan2.1-1.3B, 81 frames 480×832", 30, 12, 128, 21, 30 * 52)


def converted_attention_flops(attention: HybridAttentionConfig, shape: AttentionShape) -> int:
    """FLOPs of one converted block's self-attention (batch 1) for ``attention`` (ReHyAt or a baseline)."""
    h, d, t, p = shape.num_heads, shape.head_dim, shape.frames, shape.tokens_per_frame
    fm = attention.feature_map
    baseline = attention if isinstance(attention, BaselineAttentionConfig) else None
    if baseline is not None and baseline.variant == "linear_only":
        return linear_attention_flops(1, h, t * p, d, feature_map=fm).total
    if baseline is not None and baseline.variant == "uniform_hybrid":
        return uniform_hybrid_attention_flops(1, h, t * p, d, rate=baseline.rate, feature_map=fm).total
    counts = rehyat_attention_flops(
        1,
        h,
        t,
        p,
        d,
        chunk_frames=attention.chunk_frames,
        overlap_frames=attention.overlap_frames,
        feature_map=fm,
        causal=attention.causal,
    )
    return counts.softmax if attention.baseline == "windowed_softmax" else counts.total


def attention_share(case: FidelityCase, shape: AttentionShape, teacher_blocks: int) -> float:
    """All blocks' self-attention FLOPs of ``case`` over the softmax model's, on ``shape``."""
    blocks = case.converted_blocks
    converted = teacher_blocks if blocks is None else min(blocks, teacher_blocks)
    converted = int(shape.num_blocks * converted / teacher_blocks + 0.5)  # halves up: 22.5 → 23
    tokens = shape.frames * shape.tokens_per_frame
    softmax = softmax_attention_flops(1, shape.num_heads, tokens, shape.head_dim)
    total = converted * converted_attention_flops(case.attention, shape)
    total += (shape.num_blocks - converted) * softmax
    return total / (shape.num_blocks * softmax)
