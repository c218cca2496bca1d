"""Building blocks shared by the parallel and recurrent forms (one place for the maths).

Precision (which part runs in which dtype):

- fp32 / fp64 activations: φ, the state update ``φkᵀ[v, 1]``, the readout ``φq·[S, z]`` and the
  joint normalisation all run in fp32 (fp64 for fp64 inputs) — the reference path.
- bf16 / fp16 activations (GPU inference and autocast training): φ's MLP runs in the activations'
  dtype; the state update and the readout are matmuls in the activations' dtype (the backends
  accumulate in fp32 and round the result once); the update is added into S and z, which are
  **always kept in fp32**, and the joint normalisation ``(o_soft + φq·S) / (1 + φq·z)`` runs in fp32
  and is rounded once to the output dtype. fp32 matmuls on tensor-core GPUs are an order of
  magnitude slower than bf16 ones and would erase the linear part's gain.
- Kept in fp32 because the error bound needs it: S and z (a sum over every earlier frame — adding
  small chunk updates into a bf16 sum would lose them), φ's softplus and polynomial powers (the
  powers multiply a relative error by the degree; fp32 keeps every feature ≥ eps > 0 and finite),
  and the element-wise normalisation (one rounding instead of three).
- fp16 only (5 exponent bits): before each low-precision matmul the fp32 operands are scaled by
  powers of two (exact) so that nothing overflows 65504 and the features stay in fp16's normal
  range; the fp32 result is unscaled exactly. bf16 has fp32's exponent range and needs no scaling.

Error (tests/test_ops_precision.py; u = unit roundoff: bf16 2⁻⁸, fp16 2⁻¹¹; reference = exact
fp64 maths on the same low-precision inputs): ≈ 0.6–0.7u rms relative and ≤ 0.31u·max|v| max error
(asserted: 1.5u and 1u), against ≈ 0.43u for rounding the exact output alone; S and z within
≈ (1 + 0.5·|φ's pre-activation|)·u (asserted 1.5 + 0.75·|·|), a common factor that cancels in
the output's ratio; gradients ≤ ≈ 4u normwise (asserted 8u). Measured on CPU; on CUDA the same
dtypes run through cuBLAS with fp32 accumulation (``torch.backends.cuda.matmul.
allow_bf16_reduced_precision_reduction`` / ``..._fp16_...`` may let split-K reductions round in
low precision) — not measured on a GPU here.
"""

from __future__ import annotations

import math
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
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, n, d)
    # Fused kernels (CPU flash attention) return 0 for a query row that is NaN / inf, where the
    # maths gives NaN: put the NaN back (no device sync), so NaN in → NaN out in every form.
    bad_rows = ~torch.isfinite(q).all(dim=-1, keepdim=True)  # (B, H, n, 1)
    if torch.is_grad_enabled():
        return out.masked_fill(bad_rows, float("nan"))
    return out.masked_fill_(bad_rows, float("nan"))


LOW_PRECISION = (torch.bfloat16, torch.float16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where S, z and the joint normalisation are computed: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def is_low_precision(dtype: torch.dtype) -> bool:
    """Whether activations of ``dtype`` take the low-precision matmul path (bf16 / fp16)."""
    return dtype in LOW_PRECISION


def _power_of_two_scale(x: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """``2^-e`` per slice with ``max |x| · 2^-e ∈ [0.5, 1)`` (1 where the slice is all zero).

    Computed from ``x`` detached (a constant for autograd); multiplying by it is exact.
    """
    amax = x.detach().abs().amax(dim=dim, keepdim=True)
    _, exponent = torch.frexp(amax)  # amax = m · 2^exponent, m ∈ [0.5, 1)
    return torch.ldexp(torch.ones_like(amax), -exponent)


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
    """``Σ_j φk(k_j) [v_j, 1]ᵀ`` over all tokens of ``k, v``: fp32 ``(B, H, d', d+1)``.

    For bf16 / fp16 ``v`` the matmul runs in that dtype (see the module docstring).
    """
    fk = features(phi_k, k, "phi_k", scratch)  # (B, H, n, d')
    if is_low_precision(v.dtype):
        return _absorb_low_precision(fk, v)
    return fk.transpose(-1, -2) @ values_with_ones(v, scratch)


def _absorb_low_precision(fk: Tensor, v: Tensor) -> Tensor:
    """``fkᵀ[v, 1]`` as a matmul in ``v``'s dtype, returned in fp32 ``(B, H, d', d+1)``.

    fp16: each feature column is scaled to a maximum in [0.5, 1) and ``[v, 1]`` by ``2^-m ≤ 1/n``
    (n tokens), so every output ``|Σ_j fk_j v_j| ≤ max |v|`` fits fp16; the scales are undone in fp32.
    """
    dtype, n = v.dtype, v.shape[2]
    ones = v.new_ones(*v.shape[:-1], 1)
    if dtype != torch.float16:
        product = fk.to(dtype).transpose(-1, -2) @ torch.cat([v, ones], dim=-1)  # (B, H, d', d+1)
        return product.float()
    column = _power_of_two_scale(fk, dim=-2)  # (B, H, 1, d')
    token_scale = 2.0 ** -math.ceil(math.log2(n))  # 2^-m with 2^m ≥ n
    values = torch.cat([v, ones], dim=-1) * token_scale  # (B, H, n, d+1), exact (or subnormal)
    product = (fk * column).to(dtype).transpose(-1, -2) @ values  # (B, H, d', d+1)
    return product.float() / (column.transpose(-1, -2) * token_scale)


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
    if is_low_precision(o_soft.dtype):
        return _hybrid_output_low_precision(o_soft, fq, sz, out)
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


def _hybrid_output_low_precision(o_soft: Tensor, fq: Tensor, sz: Tensor, out: Tensor | None) -> Tensor:
    """:func:`hybrid_output` for bf16 / fp16: the readout ``φq·[S, z]`` as a matmul in ``o_soft``'s
    dtype, the normalisation in fp32 with one final rounding.

    fp16: φq's feature columns are scaled to a maximum in [0.5, 1), ``[S, z]``'s rows by the inverse
    and then as a whole to a maximum below 1, so ``|φq·[S, z]| ≤ d'`` fits fp16; undone in fp32.
    """
    dtype = o_soft.dtype
    if dtype == torch.float16:
        column = _power_of_two_scale(fq, dim=-2)  # (B, H, 1, d')
        rows = sz / column.transpose(-1, -2)  # (B, H, d', d+1) fp32, exact
        overall = _power_of_two_scale(rows, dim=(-2, -1))  # (B, H, 1, 1)
        readout = ((fq * column).to(dtype) @ (rows * overall).to(dtype)).float() / overall
    else:
        readout = (fq.to(dtype) @ sz.to(dtype)).float()  # (B, H, n, d+1)
    numer, denom = readout[..., :-1], readout[..., -1:]
    if torch.is_grad_enabled():
        result = ((numer + o_soft.float()) / (denom + 1.0)).to(dtype)
        return result if out is None else out.copy_(result)
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
