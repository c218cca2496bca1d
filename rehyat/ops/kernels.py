"""Building blocks shared by the parallel and recurrent forms (one place for the maths)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import check_features
from .scratch import TEMPORARY, Scratch

FeatureMap = Callable[[Tensor], Tensor]  # (B, H, n, d) -> (B, H, n, d'), non-negative


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


def values_with_ones(v: Tensor, scratch: Scratch | None = None) -> Tensor:
    """``[v, 1]`` in the accumulation dtype, ``(B, H, n, d+1)``: one matmul yields both S and z.

    With a ``scratch`` the result lives in its :data:`~rehyat.ops.scratch.TEMPORARY` buffer.
    """
    acc = accumulation_dtype(v.dtype)
    if scratch is None:
        return torch.cat([v.to(acc), v.new_ones(*v.shape[:-1], 1, dtype=acc)], dim=-1)
    *lead, d = v.shape
    out = scratch.get(TEMPORARY, (*lead, d + 1), dtype=acc, device=v.device)
    out[..., :d].copy_(v)
    out[..., d].fill_(1.0)
    return out


def state_matrix(kv: Tensor, k_sum: Tensor) -> Tensor:
    """``[S, z]`` as one fp32 matrix ``(B, H, d', d+1)``."""
    return torch.cat([kv, k_sum.unsqueeze(-1)], dim=-1)


def split_state_matrix(sz: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`state_matrix`: ``(S (B, H, d', d), z (B, H, d'))``."""
    return sz[..., :-1], sz[..., -1]


def features(phi: FeatureMap, x: Tensor, name: str, scratch: Scratch | None = None) -> Tensor:
    """Apply a feature map; features ``(B, H, n, d')`` in the accumulation dtype, shape-checked.

    Feature maps that declare ``accepts_scratch`` (ours do) get ``scratch`` to keep their
    buffers in; any other callable is called as ``phi(x)``.
    """
    if scratch is not None and getattr(phi, "accepts_scratch", False):
        out = phi(x, scratch=scratch)
    else:
        out = phi(x)
    check_features(name, out, x)
    return out.to(accumulation_dtype(x.dtype))


def absorb(phi_k: FeatureMap, k: Tensor, v: Tensor, scratch: Scratch | None = None) -> Tensor:
    """``Σ_j φk(k_j) [v_j, 1]ᵀ`` over all tokens of ``k, v``: fp32 ``(B, H, d', d+1)``."""
    fk = features(phi_k, k, "phi_k", scratch)  # (B, H, n, d')
    return fk.transpose(-1, -2) @ values_with_ones(v, scratch)


def hybrid_output(
    o_soft: Tensor, fq: Tensor, sz: Tensor, *, out: Tensor | None = None, scratch: Scratch | None = None,
) -> Tensor:
    """``(o_soft + φq·S) / (1 + φq·z)`` in fp32, returned in ``o_soft``'s dtype.

    Shapes: o_soft ``(B, H, n, d)``, fq ``(B, H, n, d')`` fp32, sz ``(B, H, d', d+1)`` fp32.
    With autograd off the maths runs in the readout buffer (``scratch``'s
    :data:`~rehyat.ops.scratch.TEMPORARY` when given) and the result is written into ``out``
    (any strides, ``o_soft``'s dtype), or over ``o_soft`` itself when ``out`` is None.
    """
    if fq.shape[-1] != sz.shape[-2]:
        raise ValueError(
            f"phi_q gives d'={fq.shape[-1]} features but the linear sums [S, z] have d'={sz.shape[-2]} "
            "(from phi_k or the recurrent state); phi_q, phi_k and the state must share one feature width"
        )
    if torch.is_grad_enabled():
        readout = fq @ sz  # (B, H, n, d+1)
        numer, denom = readout[..., :-1], readout[..., -1:]
        result = ((numer + o_soft.to(readout.dtype)) / (denom + 1.0)).to(o_soft.dtype)
        return result if out is None else out.copy_(result)
    if scratch is None:
        readout = fq @ sz
    else:
        shape = (*fq.shape[:-1], sz.shape[-1])
        readout = torch.matmul(fq, sz, out=scratch.get(TEMPORARY, shape, dtype=sz.dtype, device=sz.device))
    numer, denom = readout[..., :-1], readout[..., -1:]
    numer.add_(o_soft)
    denom.add_(1.0)
    return torch.div(numer, denom, out=o_soft if out is None else out)


def add_to_state(state_sz: Tensor, added: Tensor) -> Tensor:
    """``state_sz + added``: a state's ``[S, z]`` plus the sums of new frames, width-checked."""
    if state_sz.shape[-2] != added.shape[-2]:
        raise ValueError(
            f"phi_k gives d'={added.shape[-2]} features but the recurrent state holds d'="
            f"{state_sz.shape[-2]}: a state only continues with feature maps of the width that built it"
        )
    return state_sz + added


def take_overlap(k_win: Tensor, v_win: Tensor, keep_tokens: int) -> tuple[Tensor, Tensor]:
    """The last ``keep_tokens`` tokens of a window as fresh copies (the next overlap K/V).

    Always copies: the window may be a reused scratch buffer or the caller's tensor.
    """
    start = k_win.shape[2] - keep_tokens
    fmt = torch.contiguous_format
    return k_win[:, :, start:].clone(memory_format=fmt), v_win[:, :, start:].clone(memory_format=fmt)
