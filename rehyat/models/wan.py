"""Wan2.1's diffusion transformer in pure PyTorch, with the original (= ComfyUI) parameter names.

:class:`WanDiT` computes the same numbers as ComfyUI's ``comfy.ldm.wan.model.WanModel.forward``
(and diffusers' ``WanTransformer3DModel``) for the same weights, so any Wan2.1 T2V / I2V checkpoint
loads strictly with :meth:`WanDiT.from_state_dict`, and the weights it saves load in ComfyUI.

Every block's self-attention is ``blocks.N.self_attn`` (q, k, v, o, norm_q, norm_k) with a
submodule ``blocks.N.self_attn.attention`` that receives ``(q, k, v)`` as ``(B, H, N, d)`` after
the q/k RMSNorm and RoPE, plus the :class:`~rehyat.hybrid.ReHyAtRun` of the forward (its frame
grid), and returns ``(B, H, N, d)``. By default that submodule is :class:`SoftmaxAttention`;
forward hooks on it see exactly what distillation needs, and the ReHyAt conversion
(:mod:`rehyat.models.wan_rehyat`) swaps it for one holding a :class:`~rehyat.hybrid.HybridAttention`
— φ then lives inside the model's module tree (``.to()``, DDP, state dicts, checkpointing).

Tokens are frame-major: T latent frames × (H/2 · W/2) tokens per frame (patch 1×2×2).

The shape lives in :mod:`.wan_config`, the layers in :mod:`.wan_layers`, reading checkpoints in
:mod:`.wan_checkpoint`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..hybrid import FrameGrid, ReHyAtRun
from .wan_checkpoint import canonical_state_dict, detect_config
from .wan_config import WanDiTConfig
from .wan_layers import (
    WanBlock,
    WanHead,
    WanImageEmbedding,
    pad_to_patch,
    rope_frequencies,
    sinusoidal_embedding,
)


@dataclass
class WanConditioning:
    """Per-forward quantities every block and chunk share: timestep and context embeddings."""

    e: Tensor  # (B, 1, C) time embedding (head modulation)
    e0: Tensor  # (B, 1, 6, C) block modulation
    context: Tensor  # (B, L, C) embedded context (image tokens first for I2V)
    context_img_len: int  # image tokens at the front of ``context``


class WanDiT(nn.Module):
    """Wan2.1's DiT: ``forward(x (B, C, T, H, W), timestep (B,), context (B, L, text_dim))``.

    Same parameter names and numbers as ComfyUI's ``WanModel`` (T2V and I2V). Build from a
    :class:`WanDiTConfig`, or from any Wan2.1 state dict with :meth:`from_state_dict`.
    """

    def __init__(self, config: WanDiTConfig | None = None):
        super().__init__()
        config = config or WanDiTConfig()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(config)
        self.img_emb = WanImageEmbedding(config) if config.model_type == "i2v" else None
        self.gradient_checkpointing = False
        self.rehyat_conversion = None  # set by rehyat.models.wan_rehyat.convert
        self.reset_parameters()

    # --- construction -----------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Initialise like Wan's training code: Xavier linears, N(0, 0.02) embeddings, zero head.

        The output head starts at zero, so an untrained model predicts zero velocity.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for layer in seq:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        with torch.no_grad():
            for block in self.blocks:
                block.modulation.normal_(std=self.config.dim**-0.5)
            self.head.modulation.normal_(std=self.config.dim**-0.5)
        nn.init.zeros_(self.head.head.weight)

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], *, num_heads: int | None = None, strict: bool = True
    ) -> WanDiT:
        """Build the model a Wan2.1 state dict describes and load it (strictly by default).

        Accepts the original / ComfyUI key names, with or without ComfyUI's
        ``model.diffusion_model.`` prefix, or diffusers' ``WanTransformer3DModel`` names (renamed
        with :mod:`rehyat.keymap`). The config comes from the tensor shapes (see
        :func:`detect_config`); ``num_heads`` defaults to ``dim // 128`` like ComfyUI's loader.
        Tensors keep their dtype when the whole dict has one floating dtype. The model takes the
        tensors over without copying (no second copy of a large checkpoint in memory): pass a dict
        you no longer use, or copies (``{k: v.clone() ...}``) of another live model's tensors.
        """
        sd = canonical_state_dict(state_dict)
        config = detect_config(sd, num_heads=num_heads)
        dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(sd, strict=strict, assign=True)
        model._materialise_missing()
        if len(dtypes) == 1:
            model.to(dtypes.pop())
        return model

    def _materialise_missing(self) -> None:
        """Give tensors still on the meta device (keys absent from a non-strict load) real zeros."""
        for module in self.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    setattr(module, name, nn.Parameter(torch.zeros(param.shape, dtype=param.dtype)))

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (training memory ≈ one block's activations)."""
        self.gradient_checkpointing = enabled

    # --- forward ------------------------------------------------------------------------------

    def frame_grid(self, x: Tensor) -> FrameGrid:
        """Token grid of a latent ``(B, C, T, H, W)`` after patching (padded up to the patch)."""
        pt, ph, pw = self.config.patch_size
        t, h, w = x.shape[2:]
        return FrameGrid(math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))

    def condition(
        self,
        timestep: Tensor,
        context: Tensor,
        clip_fea: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> WanConditioning:
        """Embed the timesteps ``(B,)`` and the context ``(B, L, text_dim)`` (+ CLIP features)."""
        if timestep.ndim != 1:
            raise ValueError(
                f"timestep must have shape (B,) (one timestep per batch item); got {tuple(timestep.shape)}"
            )
        if context.ndim != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"context must be (B, L, {self.config.text_dim}) text features; got {tuple(context.shape)}"
            )
        dtype = dtype or self.patch_embedding.weight.dtype
        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, timestep).to(dtype))
        e = e.reshape(timestep.shape[0], -1, e.shape[-1])  # (B, 1, C)
        e0 = self.time_projection(e).unflatten(2, (6, self.config.dim))  # (B, 1, 6, C)
        context = self.text_embedding(context)
        img_len = 0
        if clip_fea is not None:
            if self.img_emb is None:
                raise ValueError(
                    "clip_fea was given but this is a T2V model (no img_emb): pass clip_fea=None"
                )
            context = torch.cat([self.img_emb(clip_fea), context], dim=1)
            img_len = clip_fea.shape[-2]
        return WanConditioning(e=e, e0=e0, context=context, context_img_len=img_len)

    def embed(self, x: Tensor) -> Tensor:
        """Patch-embed a latent ``(B, C, T, H, W)`` (already padded) into tokens ``(B, N, C)``."""
        x = self.patch_embedding(x.float()).to(x.dtype)  # (B, C, T', H', W') — the conv runs in fp32
        return x.flatten(2).transpose(1, 2)

    def run_block(
        self, index: int, tokens: Tensor, cond: WanConditioning, freqs: Tensor, run: ReHyAtRun
    ) -> Tensor:
        """Block ``index`` on ``tokens`` ``(B, N, C)`` (gradient-checkpointed when enabled and training)."""
        block = self.blocks[index]
        args = (tokens, cond.e0, freqs, cond.context, cond.context_img_len, run)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def unpatchify(self, tokens: Tensor, grid: FrameGrid) -> Tensor:
        """Head output ``(B, N, out_dim · patch)`` → latent ``(B, out_dim, T, H, W)`` (padded size)."""
        c, (pt, ph, pw) = self.config.out_dim, self.config.patch_size
        b = tokens.shape[0]
        u = tokens.view(b, grid.frames, grid.height, grid.width, pt, ph, pw, c)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)
        return u.reshape(b, c, grid.frames * pt, grid.height * ph, grid.width * pw)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        context: Tensor,
        clip_fea: Tensor | None = None,
        *,
        frame_offset: float = 0.0,
        run: ReHyAtRun | None = None,
    ) -> Tensor:
        """Predict the flow velocity of ``x`` ``(B, in_dim, T, H, W)``; returns ``(B, out_dim, T, H, W)``.

        Args:
            x: noisy latent; T, H, W that are not multiples of the patch are circular-padded.
            timestep: ``(B,)`` diffusion timesteps in [0, 1000].
            context: ``(B, L, text_dim)`` text-encoder features.
            clip_fea: ``(B, 257, clip_dim)`` CLIP image features (I2V only).
            frame_offset: RoPE position of the first frame (continuing a longer clip).
            run: per-forward context of ReHyAt blocks; by default a parallel run over ``x``'s grid.
        """
        if x.ndim != 5 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"x must be (B, {self.config.in_dim}, T, H, W); got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        grid = self.frame_grid(x)
        if run is None:
            run = ReHyAtRun(grid=grid)
        elif run.grid != grid:
            raise ValueError(f"run.grid {run.grid} does not match the latent's token grid {grid}")
        cond = self.condition(timestep, context, clip_fea, dtype=x.dtype)
        tokens = self.embed(pad_to_patch(x, self.config.patch_size))
        freqs = rope_frequencies(self.config, grid, frame_offset, device=x.device)
        for index in range(len(self.blocks)):
            tokens = self.run_block(index, tokens, cond, freqs, run)
        out = self.unpatchify(self.head(tokens, cond.e), grid)
        return out[:, :, :t, :h, :w]
