"""The benchmarked attention cases: their inputs, callables and FLOP counts (counted and analytic)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rehyat.feature_maps import FeatureMapPair
from rehyat.flops import rehyat_attention_flops, softmax_attention_flops
from rehyat.ops import rehyat_attention

from .config import CASES, REHYAT_CASES, BenchConfig


def make_inputs(cfg: BenchConfig, frames: int, tokens_per_frame: int | None = None) -> tuple[Tensor, ...]:
    """Seeded standard-normal ``q, k, v`` of shape ``(B, H, frames·P, d)``."""
    p = tokens_per_frame or cfg.tokens_per_frame
    gen = torch.Generator().manual_seed(cfg.seed + frames)
    shape = (cfg.batch, cfg.heads, frames * p, cfg.head_dim)
    return tuple(torch.randn(shape, generator=gen, dtype=cfg.torch_dtype) for _ in range(3))


def make_feature_maps(cfg: BenchConfig) -> FeatureMapPair:
    """The φq / φk pair at its default (seeded) initialisation, in eval mode."""
    torch.manual_seed(cfg.seed)
    return FeatureMapPair(cfg.heads, cfg.head_dim, cfg.feature_map).eval()


AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def build_case(case: str, cfg: BenchConfig, maps: FeatureMapPair,
               tokens_per_frame: int | None = None) -> AttentionFn:
    """``fn(q, k, v) -> out`` for ``case`` in :data:`CASES`."""
    if case == "softmax":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    if case not in REHYAT_CASES:
        raise ValueError(f"case must be one of {CASES}; got {case!r}")
    kwargs = dict(
        phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=tokens_per_frame or cfg.tokens_per_frame,
        chunk_frames=cfg.chunk_frames, overlap_frames=cfg.overlap_frames, causal=True, mode=case,
    )
    return lambda q, k, v: rehyat_attention(q, k, v, **kwargs)


def analytic_flops(case: str, cfg: BenchConfig, frames: int) -> int:
    """Minimal forward FLOPs of ``case`` (matmuls, 2 per multiply-add) from :mod:`rehyat.flops`."""
    if case == "softmax":
        return softmax_attention_flops(cfg.batch, cfg.heads, frames * cfg.tokens_per_frame, cfg.head_dim)
    return rehyat_attention_flops(
        cfg.batch, cfg.heads, frames, cfg.tokens_per_frame, cfg.head_dim,
        chunk_frames=cfg.chunk_frames, overlap_frames=cfg.overlap_frames, feature_map=cfg.feature_map,
    ).total


def implementation_extra_flops(case: str, cfg: BenchConfig, frames: int) -> int:
    """Matmul FLOPs the current ``rehyat.ops`` code performs beyond :func:`analytic_flops`.

    Tied to the implementation on purpose: ``analytic + extra`` must equal the counted FLOPs
    exactly, so a change in what the op computes shows up here (and in the smoke test). Today
    every form does exactly the analytic work: the parallel form reads φq only for chunks with a
    linear set and absorbs keys only up to the last window start; the recurrent form skips
    absorbing its last chunk unless ``output_final_state`` asks for the final state.
    """
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}; got {case!r}")
    return 0


def count_flops(fn: AttentionFn, q: Tensor, k: Tensor, v: Tensor) -> tuple[int, dict[str, int]]:
    """Run ``fn`` once under ``FlopCounterMode``: total FLOPs and FLOPs per aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(q, k, v)
    del out
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op
