"""ReHyAt conversion of the pure-PyTorch :class:`~rehyat.models.wan.WanDiT`.

:func:`convert` swaps ``blocks.N.self_attn.attention`` (the softmax submodule) of the chosen blocks
for a :class:`ReHyAtAttention` holding that block's :class:`~rehyat.hybrid.HybridAttention`, so φ is
part of the model's module tree: ``model.to()``, DDP, ``state_dict()``
(``blocks.N.self_attn.attention.hybrid.feature_maps.phi_{q,k}.*``) and gradient checkpointing
all see it. The q/k/v/o projections, norms and RoPE are untouched.

Two forms with the same numbers:

- parallel: ``model(x, timestep, context)`` — all frames at once (training, and inference with
  some softmax blocks left);
- recurrent: :func:`forward_recurrent` — the whole DiT chunk after chunk through
  :func:`rehyat.recurrent_dit.run_chunked_forward`, memory of one chunk plus the per-block states
  (every block converted and causal).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConversionConfig, check_recurrent_capable
from ..hybrid import FrameGrid, HybridAttention, ReHyAtRun, build_attention, check_hybrid_modules
from ..ops import RecurrentState
from ..recurrent_dit import run_chunked_forward
from ..weights import (
    BaseModelInfo,
    apply_phi_tensors,
    check_compatible,
    fingerprint_module,
    load_phi_weights,
    save_phi_weights,
)
from .wan import WanConditioning, WanDiT
from .wan_layers import SoftmaxAttention, pad_to_patch, rope_frequencies


class ReHyAtAttention(nn.Module):
    """``self_attn.attention`` of a converted block: ReHyAt on the forward's frame grid."""

    def __init__(self, hybrid: HybridAttention):
        super().__init__()
        self.hybrid = hybrid

    def forward(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun) -> Tensor:
        """``q, k, v`` ``(B, H, N, d)`` on ``run.grid`` → ``(B, H, N, d)``."""
        return self.hybrid(q, k, v, run)


def convert(
    model: WanDiT, config: ConversionConfig | None = None, hybrid: Mapping[int, HybridAttention] | None = None
) -> WanDiT:
    """Convert ``model``'s chosen blocks to ReHyAt **in place**; returns ``model``.

    Args:
        model: an unconverted :class:`WanDiT` (refused when some block is converted already).
        config: which blocks and how (:class:`ConversionConfig` defaults when None).
        hybrid: trained φ per block index (e.g. from :func:`load_phi`); fresh φ (fp32, on the
            model's device) when None.
    """
    config = config or ConversionConfig()
    if converted_blocks(model):
        raise ValueError("this WanDiT is already converted to ReHyAt: convert an unconverted copy instead")
    blocks = config.resolve_blocks(len(model.blocks))
    if hybrid is None:
        device = model.patch_embedding.weight.device
        hybrid = {
            i: build_attention(model.config.num_heads, model.config.head_dim, config.attention, i).to(device)
            for i in blocks
        }
    check_hybrid_modules(hybrid, blocks, config.attention, (model.config.num_heads, model.config.head_dim))
    for index in blocks:
        model.blocks[index].self_attn.attention = ReHyAtAttention(hybrid[index])
    model.rehyat_conversion = config
    return model


def unconvert(model: WanDiT) -> dict[int, HybridAttention]:
    """Restore softmax attention in every converted block (in place); returns the removed φ."""
    removed = converted_blocks(model)
    for index in removed:
        model.blocks[index].self_attn.attention = SoftmaxAttention()
    model.rehyat_conversion = None
    return removed


def converted_blocks(model: WanDiT) -> dict[int, HybridAttention]:
    """The φ module of every converted block, by block index."""
    return {
        i: block.self_attn.attention.hybrid
        for i, block in enumerate(model.blocks)
        if isinstance(block.self_attn.attention, ReHyAtAttention)
    }


def conversion_config(model: WanDiT) -> ConversionConfig | None:
    """The :class:`ConversionConfig` :func:`convert` used (None for an unconverted model)."""
    return getattr(model, "rehyat_conversion", None)


def set_overlap_frames(model: WanDiT, overlap_frames: int) -> WanDiT:
    """Give every converted block of ``model`` the overlap To = ``overlap_frames`` (in place); returns it.

    φ does not depend on To, so a converted model can sample (or train) with another overlap than it
    was converted with; :func:`save_phi` then records the new one. Refused on an unconverted model.
    """
    config = conversion_config(model)
    if config is None:
        raise ValueError("this WanDiT is not converted to ReHyAt: it has no overlap to set")
    attention = dataclasses.replace(config.attention, overlap_frames=overlap_frames)  # validates To
    for module in converted_blocks(model).values():
        module.config = dataclasses.replace(module.config, overlap_frames=overlap_frames)
    model.rehyat_conversion = dataclasses.replace(config, attention=attention)
    return model


def phi_parameters(model: WanDiT) -> list[nn.Parameter]:
    """Every φ parameter of the converted blocks (what stage-1 distillation trains)."""
    return [p for module in converted_blocks(model).values() for p in module.parameters()]


# --- φ files -----------------------------------------------------------------------------------


def base_info(model: WanDiT) -> BaseModelInfo:
    """Width, heads and depth of ``model`` (what a φ file records)."""
    return BaseModelInfo(
        dim=model.config.dim, num_heads=model.config.num_heads, num_layers=model.config.num_layers
    )


def fingerprint(model: WanDiT) -> list[float]:
    """Fingerprint of ``model``'s self-attention weights (see :mod:`rehyat.weights`)."""
    return fingerprint_module(model, "wan", num_layers=model.config.num_layers)


def save_phi(
    model: WanDiT,
    path: str | os.PathLike[str],
    training: Mapping[str, Any] | None = None,
    *,
    replace: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the φ of a converted ``model`` to a φ file (atomically; ``replace=False``: a new file only).

    ``dtype`` is the storage dtype (see :func:`rehyat.weights.phi_file.save_phi_weights`).
    """
    config = conversion_config(model)
    if config is None:
        raise ValueError("this WanDiT is not converted to ReHyAt: nothing to save")
    return save_phi_weights(
        path, converted_blocks(model), config, base_info(model), fingerprint(model), training=training,
        replace=replace, dtype=dtype,
    )


def load_phi(model: WanDiT, path: str | os.PathLike[str]) -> WanDiT:
    """Convert ``model`` in place with the φ (and conversion config) of a φ file made for it."""
    phi = load_phi_weights(path)
    check_compatible(phi, base_info(model), fingerprint(model))
    device = model.patch_embedding.weight.device
    hybrid = {
        i: build_attention(model.config.num_heads, model.config.head_dim, phi.config.attention, i).to(device)
        for i in phi.blocks
    }
    apply_phi_tensors(hybrid, phi.tensors)
    return convert(model, phi.config, hybrid)


# --- recurrent (chunk-by-chunk) forward ----------------------------------------------------------


class _WanDiTChunks:
    """:class:`rehyat.recurrent_dit.ChunkedDiT` over a converted :class:`WanDiT`.

    Methods receive absolute frame indices (RoPE positions); ``x`` holds the frames from
    ``frame_offset`` on.
    """

    def __init__(self, model: WanDiT, x: Tensor, cond: WanConditioning, grid: FrameGrid, frame_offset: int):
        self.model, self.x, self.cond, self.grid, self.frame_offset = model, x, cond, grid, frame_offset
        self._freqs: tuple[int, Tensor] | None = None

    def embed(self, f0: int, f1: int) -> Tensor:
        pt, a, b = self.model.config.patch_size[0], f0 - self.frame_offset, f1 - self.frame_offset
        return self.model.embed(self.x[:, :, a * pt : b * pt])  # (B, n·P, C)

    def run_block(self, index: int, tokens: Tensor, f0: int, f1: int, run: ReHyAtRun) -> Tensor:
        if self._freqs is None or self._freqs[0] != f0:  # one RoPE table per chunk, shared by its blocks
            chunk = FrameGrid(f1 - f0, self.grid.height, self.grid.width)
            freqs = rope_frequencies(self.model.config, chunk, f0, device=tokens.device)
            self._freqs = (f0, freqs)
        cond = self.cond
        # Called directly (no gradient checkpointing): the layers update run.states as they go.
        return self.model.blocks[index](
            tokens, cond.e0, self._freqs[1], cond.context, cond.context_img_len, run
        )

    def finish_chunk(self, tokens: Tensor, f0: int, f1: int) -> Tensor:
        chunk = FrameGrid(f1 - f0, self.grid.height, self.grid.width)
        return self.model.unpatchify(self.model.head(tokens, self.cond.e), chunk)  # (B, C, n, H, W)


def forward_recurrent(
    model: WanDiT,
    x: Tensor,
    timestep: Tensor,
    context: Tensor,
    clip_fea: Tensor | None = None,
    *,
    frame_offset: int = 0,
    states: dict[int, RecurrentState] | None = None,
    states_out: dict[int, RecurrentState] | None = None,
) -> Tensor:
    """The converted model's forward computed chunk after chunk (same numbers as ``model(...)``).

    Peak memory is one chunk's activations plus the per-block recurrent states, whatever the
    number of frames. Every block must be converted and causal.

    Args:
        model: a :class:`WanDiT` converted with :func:`convert`.
        x, timestep, context, clip_fea: as in :meth:`WanDiT.forward`.
        frame_offset: absolute index (RoPE position) of ``x``'s first frame — continuing a clip;
            a multiple of Tc, and then ``states`` must be the states after frame ``frame_offset``.
        states: per-block states after the earlier frames (None: a fresh clip).
        states_out: if given, filled with each block's state after the last frame.
    """
    config = conversion_config(model)
    if config is None:
        raise ValueError(
            "forward_recurrent needs a WanDiT converted to ReHyAt (rehyat.models.wan_rehyat.convert)"
        )
    check_recurrent_capable(tuple(converted_blocks(model)), len(model.blocks), config.attention)
    if x.ndim != 5 or x.shape[1] != model.config.in_dim:
        raise ValueError(f"x must be (B, {model.config.in_dim}, T, H, W); got {tuple(x.shape)}")
    t, h, w = x.shape[2:]
    grid = model.frame_grid(x)
    cond = model.condition(timestep, context, clip_fea, dtype=x.dtype)
    chunks = _WanDiTChunks(model, pad_to_patch(x, model.config.patch_size), cond, grid, frame_offset)
    outputs = run_chunked_forward(
        chunks,
        grid=grid,
        num_blocks=len(model.blocks),
        chunk_frames=config.attention.chunk_frames,
        frame_offset=frame_offset,
        states=states,
        states_out=states_out,
    )
    return torch.cat(outputs, dim=2)[:, :, :t, :h, :w]
