"""Chunked softmax attention without the linear part: ReHyAt's softmax windows alone.

The "what does the linear part buy" baseline of the fidelity table. Chunk t (frames
``[t·Tc, (t+1)·Tc)``) attends with softmax to frames ``[max(t·Tc − To, 0), (t+1)·Tc)`` and to
nothing else — a causal sliding-window attention on the chunk grid. It has no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import require_int
from .baseline_checks import check_frames, check_qkv
from .layout import chunk_layout


def windowed_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, *, tokens_per_frame: int, chunk_frames: int, overlap_frames: int,
    scale: float | None = None,
) -> Tensor:
    """Softmax over each chunk's window only; ``(B, H, N, d)`` → ``(B, H, N, d)``, O(N·window)."""
    check_qkv(q, k, v)
    frames = check_frames(q.shape[2], tokens_per_frame)
    require_int("chunk_frames", chunk_frames, low=1)
    require_int("overlap_frames", overlap_frames, low=0)
    p = tokens_per_frame
    out = torch.empty_like(q)  # (B, H, N, d)
    for chunk in chunk_layout(frames, chunk_frames, overlap_frames):
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        window = slice(chunk.window_start * p, chunk.window_end * p)
        out[:, :, rows] = F.scaled_dot_product_attention(
            q[:, :, rows], k[:, :, window], v[:, :, window], scale=scale
        )
    return out


def windowed_softmax_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, tokens_per_frame: int, chunk_frames: int, overlap_frames: int,
    scale: float | None = None,
) -> Tensor:
    """Reference: dense fp64 logits with a ``(N, N)`` window mask."""
    check_qkv(q, k, v)
    frames = check_frames(q.shape[2], tokens_per_frame)
    require_int("chunk_frames", chunk_frames, low=1)
    require_int("overlap_frames", overlap_frames, low=0)
    p, d = tokens_per_frame, q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    key_frame = torch.arange(frames * p, device=q.device) // p
    rows = []
    for chunk in chunk_layout(frames, chunk_frames, overlap_frames):
        allowed = (key_frame >= chunk.window_start) & (key_frame < chunk.window_end)
        rows.append(allowed.expand((chunk.frame_end - chunk.frame_start) * p, -1))
    mask = torch.cat(rows)  # (N, N)
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights @ v.double()).to(q.dtype)
