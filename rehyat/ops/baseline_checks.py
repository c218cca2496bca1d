"""Argument checks shared by the baseline attention forms (linear-only, windowed softmax, uniform hybrid)."""

from __future__ import annotations

from torch import Tensor

from ..config import require_int


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """``q, k, v`` must be ``(B, H, N, d)`` with one shape, dtype and device."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be (B, H, N, d); got shape {tuple(x.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must share one shape (B, H, N, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share one dtype and device")
    if q.shape[2] < 1:
        raise ValueError("q, k and v must hold at least one token")


def check_frames(tokens: int, tokens_per_frame: int) -> int:
    """The number of frames of ``tokens`` frame-major tokens (``tokens_per_frame`` must divide it)."""
    require_int("tokens_per_frame", tokens_per_frame, low=1)
    if tokens % tokens_per_frame:
        raise ValueError(
            f"N={tokens} tokens is not a whole number of frames of tokens_per_frame={tokens_per_frame}"
        )
    return tokens // tokens_per_frame
