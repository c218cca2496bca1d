"""Stage-2 losses of the student: the weighted velocity error and the boundary-step term.

A chunk-causal student's velocity error tends to be shared within a chunk (every frame of a chunk
sees the same softmax window) but to change from one chunk to the next — an extra step at every
chunk boundary of the sampled clip (the seam ratio). :func:`boundary_step_loss` penalises exactly
that change: the weighted square of ``error[first frame of chunk k] − error[last frame of chunk
k−1]`` over the boundaries, which is zero for an error that is the same on both sides however
large, so it adds nothing the per-frame loss already asks for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import require_int


def weighted_mse(error: Tensor, weight: Tensor) -> Tensor:
    """``Σ w·e² / Σ w`` of a velocity error ``(B, C, T, h, w)`` and broadcastable weights."""
    return (error**2 * weight).sum() / weight.sum()


def boundary_step_loss(error: Tensor, weight: Tensor, chunk_frames: int) -> Tensor:
    """Weighted mean square of the change of ``error`` across each chunk boundary.

    Args:
        error: prediction − target, ``(B, C, T, h, w)`` (frame-major latent).
        weight: loss weights of the same shape (the mean of the two frames' weights is used).
        chunk_frames: Tc; the boundaries are the frame pairs (k·Tc − 1, k·Tc) for k ≥ 1.

    Returns:
        A scalar; zero when the clip has one chunk (T ≤ Tc).
    """
    require_int("chunk_frames", chunk_frames, low=1)
    frames = error.shape[2]
    if frames <= chunk_frames:
        return error.new_zeros(())
    starts = torch.arange(chunk_frames, frames, chunk_frames, device=error.device)  # chunk starts, k ≥ 1
    step = error[:, :, starts] - error[:, :, starts - 1]  # (B, C, K, h, w)
    mean_weight = 0.5 * (weight[:, :, starts] + weight[:, :, starts - 1])
    return (step**2 * mean_weight).sum() / mean_weight.sum()


__all__ = ["boundary_step_loss", "weighted_mse"]
