"""Building blocks shared by the parallel and recurrent forms (one place for the maths)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import check_features


def softmax_window(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
    """Softmax attention of ``q`` over one window ``k, v``, normalised on its own.

    Uses the fused SDPA kernel of the device (flash attention for CPU, flash / memory-efficient on
    CUDA), whose row-wise log-sum-exp stabilisation makes the softmax part contribute its
    normalised output with weight 1. Shapes: q ``(B, H, n, d)``, k/v ``(B, H, m, d)``.
    """
    return F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, n, d)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where S, z and the linear part are computed: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def values_with_ones(v: Tensor) -> Tensor:
    """``[v, 1]`` in the accumulation dtype, ``(B, H, n, d+1)``: one matmul yields both S and z."""
    acc = accumulation_dtype(v.dtype)
    return torch.cat([v.to(acc), v.new_ones(*v.shape[:-1], 1, dtype=acc)], dim=-1)


def state_matrix(kv: Tensor, k_sum: Tensor) -> Tensor:
    """``[S, z]`` as one fp32 matrix ``(B, H, d', d+1)``."""
    return torch.cat([kv, k_sum.unsqueeze(-1)], dim=-1)


def split_state_matrix(sz: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`state_matrix`: ``(S (B, H, d', d), z (B, H, d'))``."""
    return sz[..., :-1], sz[..., -1]


def features(phi, x: Tensor, name: str) -> Tensor:
    """Apply a feature map; features ``(B, H, n, d')`` in the accumulation dtype, shape-checked."""
    out = phi(x)
    check_features(name, out, x)
    return out.to(accumulation_dtype(x.dtype))


def absorb(phi_k, k: Tensor, v: Tensor) -> Tensor:
    """``Σ_j φk(k_j) [v_j, 1]ᵀ`` over all tokens of ``k, v``: fp32 ``(B, H, d', d+1)``."""
    fk = features(phi_k, k, "phi_k")  # (B, H, n, d')
    return fk.transpose(-1, -2) @ values_with_ones(v)


def hybrid_output(o_soft: Tensor, fq: Tensor, sz: Tensor) -> Tensor:
    """``(o_soft + φq·S) / (1 + φq·z)`` in fp32, returned in ``o_soft``'s dtype.

    Shapes: o_soft ``(B, H, n, d)``, fq ``(B, H, n, d')`` fp32, sz ``(B, H, d', d+1)`` or
    ``(B, H, 1, d', d+1)``-broadcastable fp32.
    """
    readout = fq @ sz  # (B, H, n, d+1)
    numer, denom = readout[..., :-1], readout[..., -1:]
    if torch.is_grad_enabled() and (readout.requires_grad or o_soft.requires_grad):
        return ((numer + o_soft.to(readout.dtype)) / (denom + 1.0)).to(o_soft.dtype)
    # Inference: reuse the readout buffer instead of allocating three temporaries.
    return numer.add_(o_soft).div_(denom.add_(1.0)).to(o_soft.dtype)


def take_overlap(k_win: Tensor, v_win: Tensor, keep_tokens: int) -> tuple[Tensor, Tensor]:
    """The last ``keep_tokens`` tokens of a window as contiguous copies (the next overlap K/V)."""
    start = k_win.shape[2] - keep_tokens
    return k_win[:, :, start:].contiguous(), v_win[:, :, start:].contiguous()
