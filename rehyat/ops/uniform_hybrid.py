"""Uniform hybrid attention ("Attention Surgery" style, rate R): the token-uniform baseline.

Every query attends with softmax to a uniformly subsampled ``ceil(N / R)`` of the keys — every R-th
token of the frame-major sequence (token indices ``0, R, 2R, …``) — and with linear attention
(φq, φk) to all the other keys, jointly normalised exactly like ReHyAt::

    y_i = (o_soft_i + φq(q_i)·S) / (1 + φq(q_i)·z)

with ``o_soft`` normalised by its own log-sum-exp and ``S, z`` summed over the non-sampled keys.
Unlike ReHyAt the softmax set ignores time: it costs O(N²/R) and is the same for every query.
``rate=1`` is plain softmax attention. S and z accumulate in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import require_int
from .baseline_checks import check_qkv
from .kernels import accumulation_dtype
from .layout import check_feature_widths, check_features

FeatureMap = Callable[[Tensor], Tensor]


def softmax_key_mask(tokens: int, rate: int, device: torch.device | str = "cpu") -> Tensor:
    """Boolean ``(N,)``: True for the keys attended with softmax (every ``rate``-th token from 0)."""
    require_int("rate", rate, low=1)
    return torch.arange(tokens, device=device) % rate == 0


def uniform_hybrid_attention(
    q: Tensor, k: Tensor, v: Tensor, *, phi_q: FeatureMap, phi_k: FeatureMap, rate: int,
    scale: float | None = None,
) -> Tensor:
    """Uniform hybrid attention; ``q, k, v`` ``(B, H, N, d)`` → ``(B, H, N, d)``."""
    check_qkv(q, k, v)
    require_int("rate", rate, low=1)
    o_soft = F.scaled_dot_product_attention(q, k[:, :, ::rate], v[:, :, ::rate], scale=scale)  # (B, H, N, d)
    if rate == 1 or k.shape[2] == 1:
        return o_soft
    linear_keys = ~softmax_key_mask(k.shape[2], rate, k.device)
    acc = accumulation_dtype(q.dtype)
    k_lin, v_lin = k[:, :, linear_keys], v[:, :, linear_keys]  # (B, H, N − ⌈N/R⌉, d)
    fq, fk = phi_q(q), phi_k(k_lin)
    check_features("phi_q", fq, q)
    check_features("phi_k", fk, k_lin)
    check_feature_widths(fq, fk)
    ones = torch.ones(*v_lin.shape[:-1], 1, dtype=acc, device=v.device)
    sz = fk.to(acc).transpose(-1, -2) @ torch.cat([v_lin.to(acc), ones], dim=-1)  # (B, H, d', d+1)
    readout = fq.to(acc) @ sz  # (B, H, N, d+1)
    return ((readout[..., :-1] + o_soft.to(acc)) / (readout[..., -1:] + 1.0)).to(q.dtype)


def uniform_hybrid_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, phi_q: FeatureMap, phi_k: FeatureMap, rate: int,
    scale: float | None = None,
) -> Tensor:
    """Reference: dense fp64 softmax over the sampled keys plus the dense linear kernel on the rest."""
    check_qkv(q, k, v)
    n, d = k.shape[2], q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    sampled = softmax_key_mask(n, rate, q.device)  # (N,)
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, N, N)
    o_soft = torch.softmax(logits.masked_fill(~sampled, float("-inf")), dim=-1) @ v.double()
    weights = (phi_q(q).double() @ phi_k(k).double().transpose(-1, -2)) * (~sampled).double()
    return ((o_soft + weights @ v.double()) / (1.0 + weights.sum(-1, keepdim=True))).to(q.dtype)
