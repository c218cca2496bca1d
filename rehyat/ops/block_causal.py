"""Exact block-causal softmax attention: the best any chunk-causal student can reach.

Chunk t (frames ``[t·Tc, (t+1)·Tc)``) attends with exact softmax to every frame before its end —
its own chunk and all earlier frames — and to nothing later. A causal ReHyAt block replaces the
part of this before the softmax window by linear attention, so this is the oracle for what a
perfect φ could give under the same causality (the fidelity table's "block-causal oracle" row).
It is the windowed softmax with an overlap that reaches the first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import require_int
from .baseline_checks import check_frames, check_qkv
from .windowed_softmax import windowed_softmax_attention


def block_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, *, tokens_per_frame: int, chunk_frames: int, scale: float | None = None
) -> Tensor:
    """Softmax of each chunk's queries over all frames up to the chunk's end; ``(B, H, N, d)`` in and out."""
    check_qkv(q, k, v)
    frames = check_frames(q.shape[2], tokens_per_frame)
    require_int("chunk_frames", chunk_frames, low=1)
    return windowed_softmax_attention(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames, overlap_frames=frames,
        scale=scale,
    )


def block_causal_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, tokens_per_frame: int, chunk_frames: int, scale: float | None = None
) -> Tensor:
    """Reference: dense fp64 logits, key frame ≤ last frame of the query's chunk."""
    check_qkv(q, k, v)
    frames = check_frames(q.shape[2], tokens_per_frame)
    require_int("chunk_frames", chunk_frames, low=1)
    p, d = tokens_per_frame, q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    frame = torch.arange(frames * p, device=q.device) // p  # (N,)
    chunk_end = (frame // chunk_frames + 1) * chunk_frames  # (N,) first frame after the query's chunk
    mask = frame[None, :] < chunk_end[:, None]  # (N, N) query row, key column
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights @ v.double()).to(q.dtype)
