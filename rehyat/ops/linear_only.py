"""Linear-only attention (Hedgehog style): learned feature maps over every token, no softmax part.

The baseline that ReHyAt is compared against in the fidelity table: every query attends to every
key (bidirectional, like the softmax teacher) through ``φq(q)·φk(k)``::

    y_i = φq(q_i)·S / φq(q_i)·z,   S = Σ_j φk(k_j) v_jᵀ,  z = Σ_j φk(k_j)

O(N) time and memory. S and z accumulate in fp32 (fp64 for fp64 inputs); the result has the input
dtype. Feature maps must be strictly positive (ours are: ψ ≥ eps), so the denominator is > 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .baseline_checks import check_qkv
from .kernels import accumulation_dtype
from .layout import check_feature_widths, check_features

FeatureMap = Callable[[Tensor], Tensor]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, phi_q: FeatureMap, phi_k: FeatureMap) -> Tensor:
    """Bidirectional linear attention over all tokens; ``q, k, v`` ``(B, H, N, d)`` → ``(B, H, N, d)``."""
    check_qkv(q, k, v)
    acc = accumulation_dtype(q.dtype)
    fq, fk = phi_q(q), phi_k(k)
    check_features("phi_q", fq, q)
    check_features("phi_k", fk, k)
    check_feature_widths(fq, fk)
    fq, fk = fq.to(acc), fk.to(acc)  # (B, H, N, d')
    ones = torch.ones(*v.shape[:-1], 1, dtype=acc, device=v.device)
    sz = fk.transpose(-1, -2) @ torch.cat([v.to(acc), ones], dim=-1)  # (B, H, d', d+1)
    readout = fq @ sz  # (B, H, N, d+1)
    return (readout[..., :-1] / readout[..., -1:]).to(q.dtype)


def linear_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, phi_q: FeatureMap, phi_k: FeatureMap
) -> Tensor:
    """Reference: the dense ``(N, N)`` kernel matrix in fp64, row-normalised."""
    check_qkv(q, k, v)
    fq, fk = phi_q(q).double(), phi_k(k).double()
    weights = fq @ fk.transpose(-1, -2)  # (B, H, N, N)
    return ((weights @ v.double()) / weights.sum(-1, keepdim=True)).to(q.dtype)
