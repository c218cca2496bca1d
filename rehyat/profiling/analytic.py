"""Analytic forward FLOPs of a whole Wan2.1 DiT for every profiled configuration.

Accounting (the same as ``torch.utils.flop_counter``, so the two can be compared exactly): matmuls
and convolutions only, 2 FLOPs per multiply-add, biases, norms, RoPE, activations, gating and
modulation (all element-wise in Wan2.1) not counted; one model evaluation of batch 1 (a CFG step is
two evaluations). Per block:

- self-attention: q, k, v, o projections (4 · 2ND²) and the attention core — softmax ``QKᵀ`` and
  ``AV`` (4N²D), or ReHyAt / uniform hybrid (softmax part + φ MLPs + linear part, see
  :mod:`rehyat.flops`);
- cross-attention (text-to-video): q, o on the N video tokens, k, v on the L text tokens, core 4NLD;
- FFN: 2 · 2NDF.

The recurrent form runs the same matmuls chunk by chunk plus two extras (counted here so the
analytic count equals the flop counter): cross-attention's text k, v per chunk, and the final
state's absorption of the last frames (:func:`recurrent_extra_cross_flops`).

Outside the blocks: patch embedding (Conv3d), text embedding (2 linears on L tokens), time
embedding and projection (per batch item) and the output head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..flops import (
    LinearAccounting,
    ReHyAtFlops,
    rehyat_attention_flops,
    softmax_attention_flops,
    uniform_hybrid_attention_flops,
)
from .cases import (
    Case,
    ContextWindowCase,
    InnerCase,
    ReHyAtCase,
    SoftmaxCase,
    UniformHybridCase,
    resolve_converted,
)
from .presets import LatentGrid, WanShape


@dataclass(frozen=True)
class BlockFlops:
    """Forward FLOPs of one DiT block, by part."""

    attention_core: ReHyAtFlops  # QKᵀ/AV (+ φ and linear part for hybrids)
    projections: int  # self-attention q, k, v, o
    cross_attention: int  # projections + core
    ffn: int
    converted: bool

    @property
    def attention(self) -> int:
        """The self-attention layer: core + q/k/v/o projections."""
        return self.attention_core.total + self.projections

    @property
    def total(self) -> int:
        """Everything in the block."""
        return self.attention + self.cross_attention + self.ffn


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs of the whole DiT for one model evaluation (all windows, for context windows)."""

    blocks: tuple[BlockFlops, ...]  # every block of every evaluation, in run order
    outside_blocks: int  # embeddings, time projection and head, all evaluations
    evaluations: int  # model calls (context windows: one per window)

    @property
    def total(self) -> int:
        """All FLOPs of the evaluation(s)."""
        return sum(b.total for b in self.blocks) + self.outside_blocks

    @property
    def attention(self) -> int:
        """Self-attention layers (core + projections) of every block."""
        return sum(b.attention for b in self.blocks)

    @property
    def attention_core(self) -> int:
        """Self-attention cores only."""
        return sum(b.attention_core.total for b in self.blocks)

    def representative_block(self) -> BlockFlops:
        """A converted block if any (the first), else the first block."""
        return next((b for b in self.blocks if b.converted), self.blocks[0])


def attention_core_flops(case: InnerCase, shape: WanShape, frames: int, tokens_per_frame: int, *,
                         converted: bool = True, batch: int = 1,
                         linear_accounting: LinearAccounting = "incremental") -> ReHyAtFlops:
    """Self-attention core of one block (``converted=False``: the softmax block of a partial conversion)."""
    h, d, n = shape.num_heads, shape.head_dim, frames * tokens_per_frame
    if isinstance(case, SoftmaxCase) or not converted:
        return ReHyAtFlops(softmax_attention_flops(batch, h, n, d), 0, 0)
    if isinstance(case, ReHyAtCase):
        return rehyat_attention_flops(batch, h, frames, tokens_per_frame, d, chunk_frames=case.chunk_frames,
                                      overlap_frames=case.overlap_frames, feature_map=case.feature_map,
                                      causal=case.causal, linear_accounting=linear_accounting)
    if isinstance(case, UniformHybridCase):
        return uniform_hybrid_attention_flops(batch, h, n, d, rate=case.rate, feature_map=case.feature_map,
                                              linear_accounting=linear_accounting)
    raise TypeError(f"not an attention case: {case!r}")


def block_flops(case: InnerCase, shape: WanShape, frames: int, tokens_per_frame: int, *,
                converted: bool = True, batch: int = 1,
                linear_accounting: LinearAccounting = "incremental") -> BlockFlops:
    """FLOPs of one DiT block on ``frames × tokens_per_frame`` tokens (see the module docstring)."""
    n, dim, text = batch * frames * tokens_per_frame, shape.dim, batch * shape.text_len
    core = attention_core_flops(case, shape, frames, tokens_per_frame, converted=converted, batch=batch,
                                linear_accounting=linear_accounting)
    cross = 2 * 2 * n * dim * dim + 2 * 2 * text * dim * dim + 4 * batch * frames * tokens_per_frame * \
        shape.text_len * dim
    if isinstance(case, ReHyAtCase) and case.form == "recurrent":
        cross += recurrent_extra_cross_flops(case, shape, frames, batch=batch)
        if converted:
            core = _plus_final_absorption(core, case, shape, frames, tokens_per_frame, batch)
    return BlockFlops(core, projections=4 * 2 * n * dim * dim, cross_attention=cross,
                      ffn=2 * 2 * n * dim * shape.ffn_dim,
                      converted=converted and not isinstance(case, SoftmaxCase))


def recurrent_extra_cross_flops(case: ReHyAtCase, shape: WanShape, frames: int, *, batch: int = 1) -> int:
    """The recurrent form runs every block once per chunk, so cross-attention's k, v projections of the
    text are recomputed for every chunk after the first."""
    chunks = -(-frames // case.chunk_frames)
    return (chunks - 1) * 2 * 2 * batch * shape.text_len * shape.dim * shape.dim


def _plus_final_absorption(core: ReHyAtFlops, case: ReHyAtCase, shape: WanShape, frames: int,
                           tokens_per_frame: int, batch: int) -> ReHyAtFlops:
    """The recurrent form also absorbs the frames that leave the last chunk's window into the final
    state (φk and ``φkᵀ[v, 1]`` on them), which the parallel form never computes."""
    last_start = (frames - 1) // case.chunk_frames * case.chunk_frames
    absorbed_parallel = max(last_start - case.overlap_frames, 0)
    absorbed_recurrent = max(frames - case.overlap_frames, 0)
    keys = batch * shape.num_heads * (absorbed_recurrent - absorbed_parallel) * tokens_per_frame
    fm, d = case.feature_map, shape.head_dim
    phi = 2 * (d * fm.hidden_dim + fm.hidden_dim * fm.feature_dim) * keys
    linear = core.linear + 2 * fm.feature_dim * (d + 1) * keys
    return ReHyAtFlops(core.softmax, core.feature_maps + phi, linear)


def outside_block_flops(shape: WanShape, frames: int, tokens_per_frame: int, *, batch: int = 1) -> int:
    """Patch embedding, text embedding, time embedding + projection and head of one evaluation."""
    n, dim, patch = batch * frames * tokens_per_frame, shape.dim, math.prod(shape.patch)
    patch_embedding = 2 * n * dim * shape.in_dim * patch
    text = 2 * batch * shape.text_len * (shape.text_dim * dim + dim * dim)
    time = 2 * batch * (shape.freq_dim * dim + dim * dim + dim * 6 * dim)
    head = 2 * n * dim * shape.out_dim * patch
    return patch_embedding + text + time + head


def converted_count(case: InnerCase, shape: WanShape) -> int:
    """Blocks the case converts (0 for softmax)."""
    if isinstance(case, SoftmaxCase):
        return 0
    return resolve_converted(case.converted_blocks, shape.num_layers)


def model_flops(case: Case, shape: WanShape, latent: LatentGrid, *, batch: int = 1,
                linear_accounting: LinearAccounting = "incremental") -> ModelFlops:
    """Whole-DiT FLOPs of ``case`` on ``latent`` (the converted blocks are the last ones)."""
    p = latent.tokens_per_frame(shape.patch)
    frames = latent.token_grid(shape.patch)[0]
    windows = case.windows(frames) if isinstance(case, ContextWindowCase) else [(0, frames)]
    inner = case.inner if isinstance(case, ContextWindowCase) else case
    converted = converted_count(inner, shape)
    blocks: list[BlockFlops] = []
    outside = 0
    for start, end in windows:
        for index in range(shape.num_layers):
            is_converted = index >= shape.num_layers - converted
            blocks.append(block_flops(inner, shape, end - start, p, converted=is_converted, batch=batch,
                                      linear_accounting=linear_accounting))
        outside += outside_block_flops(shape, end - start, p, batch=batch)
    return ModelFlops(tuple(blocks), outside, len(windows))
