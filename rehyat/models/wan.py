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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import require_int, require_real
from ..hybrid import FrameGrid, ReHyAtRun

ModelType = Literal["t2v", "i2v"]
MODEL_TYPES: tuple[str, ...] = ("t2v", "i2v")
CLIP_DIM = 1280  # width of the CLIP vision features an I2V model's img_emb takes
ROPE_THETA = 10000.0
COMFYUI_PREFIX = "model.diffusion_model."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class WanDiTConfig:
    """Shape of a Wan2.1 DiT. Defaults: Wan2.1-T2V-1.3B.

    Attributes:
        dim: model width; a multiple of ``num_heads``.
        ffn_dim: hidden width of each block's FFN.
        num_heads: attention heads (ComfyUI's loader assumes ``dim // 128``).
        num_layers: transformer blocks.
        in_dim: latent channels in (16; 36 for I2V, which concatenates the image condition).
        out_dim: latent channels out.
        text_dim: width of the text-encoder features (4096 for umt5-xxl; ComfyUI assumes 4096).
        freq_dim: width of the sinusoidal timestep embedding (ComfyUI assumes 256).
        patch_size: (t, h, w) patch; Wan2.1 uses (1, 2, 2).
        eps: epsilon of every norm.
        model_type: "t2v", or "i2v" (adds ``img_emb`` and image keys in cross-attention).
        qk_norm: RMSNorm on q and k (True in every Wan2.1 checkpoint).
        cross_attn_norm: affine LayerNorm ``norm3`` before cross-attention (True in Wan2.1).
        flf_pos_embed_token_number: tokens of FLF2V's ``img_emb.emb_pos`` (None: absent).
        clip_dim: width of the CLIP vision features ``img_emb`` takes (I2V only; 1280 in Wan2.1).
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    model_type: ModelType = "t2v"
    qk_norm: bool = True
    cross_attn_norm: bool = True
    flf_pos_embed_token_number: int | None = None
    clip_dim: int = CLIP_DIM

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "freq_dim",
            "clip_dim",
        ):
            require_int(name, getattr(self, name), low=1)
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim = dim / num_heads must be even and ≥ 6 for RoPE; got {self.head_dim}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even; got {self.freq_dim}")
        patch = tuple(self.patch_size)
        if len(patch) != 3:
            raise ValueError(f"patch_size must be (t, h, w); got {self.patch_size!r}")
        for p in patch:
            require_int("patch_size[i]", p, low=1)
        object.__setattr__(self, "patch_size", patch)
        require_real("eps", self.eps, low=0.0, high=1.0)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}; got {self.model_type!r}")
        if self.flf_pos_embed_token_number is not None:
            require_int("flf_pos_embed_token_number", self.flf_pos_embed_token_number, low=1)

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Channels of each head rotated by the frame, row and column position (Wan's split)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WanDiTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown WanDiTConfig field(s) {unknown}; allowed: {sorted(names)}")
        data = dict(data)
        if "patch_size" in data:
            data["patch_size"] = tuple(data["patch_size"])
        return cls(**data)


# ------------------------------------------------------------------------------------------------
# positional and timestep embeddings
# ------------------------------------------------------------------------------------------------


def sinusoidal_embedding(dim: int, position: Tensor) -> Tensor:
    """Wan's 1-D sinusoidal embedding ``(n,) -> (n, dim)``: cos then sin, fp32."""
    half = dim // 2
    position = position.to(torch.float32)
    freqs = torch.pow(10000, -torch.arange(half, device=position.device).to(position).div(half))
    sinusoid = torch.outer(position, freqs)  # (n, half)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def _axis_rotations(positions: Tensor, dim: int) -> Tensor:
    """2×2 rotation matrices ``(n, dim/2, 2, 2)`` of one RoPE axis (angles in fp64, result fp32)."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=positions.device)
    omega = 1.0 / (ROPE_THETA**scale)  # (dim/2,)
    angle = positions.to(torch.float64)[:, None] * omega[None]  # (n, dim/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angle.shape, 2, 2).to(torch.float32)


def rope_frequencies(
    config: WanDiTConfig, grid: FrameGrid, frame_start: float = 0.0, device: torch.device | str | None = None
) -> Tensor:
    """RoPE rotations of a frame-major token grid: ``(1, N, 1, head_dim/2, 2, 2)`` fp32.

    Token (f, i, j) is rotated by frame position ``frame_start + f``, row ``i`` and column ``j``
    (ComfyUI's ``WanModel.rope_encode`` without rope_options).
    """
    t_axis, h_axis, w_axis = config.rope_axes
    frames = torch.arange(grid.frames, device=device, dtype=torch.float64) + frame_start
    rows = torch.arange(grid.height, device=device, dtype=torch.float64)
    cols = torch.arange(grid.width, device=device, dtype=torch.float64)
    per_axis = [_axis_rotations(frames, t_axis), _axis_rotations(rows, h_axis), _axis_rotations(cols, w_axis)]
    t_rot = per_axis[0][:, None, None].expand(-1, grid.height, grid.width, -1, -1, -1)
    h_rot = per_axis[1][None, :, None].expand(grid.frames, -1, grid.width, -1, -1, -1)
    w_rot = per_axis[2][None, None, :].expand(grid.frames, grid.height, -1, -1, -1, -1)
    rot = torch.cat([t_rot, h_rot, w_rot], dim=3)  # (T, H, W, d/2, 2, 2)
    return rot.reshape(1, grid.tokens, 1, config.head_dim // 2, 2, 2)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate channel pairs of ``x`` ``(B, N, H, d)`` by ``freqs`` ``(1, N, 1, d/2, 2, 2)``."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)  # (B, N, H, d/2, 1, 2)
    out = freqs[..., 0] * pairs[..., 0]
    out.addcmul_(freqs[..., 1], pairs[..., 1])
    return out.reshape(*x.shape).type_as(x)


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------


class SoftmaxAttention(nn.Module):
    """Full softmax attention over all tokens: the default ``self_attn.attention`` submodule."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun | None = None) -> Tensor:
        """``q, k, v`` ``(B, H, N, d)`` → ``(B, H, N, d)`` (``run`` is unused: every token sees all)."""
        return F.scaled_dot_product_attention(q, k, v)


class WanSelfAttention(nn.Module):
    """Self-attention of one block: projections, q/k RMSNorm, RoPE, then ``self.attention``."""

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        dim = config.dim
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=config.eps) if config.qk_norm else nn.Identity()
        self.attention: nn.Module = SoftmaxAttention()

    def forward(self, x: Tensor, freqs: Tensor, run: ReHyAtRun) -> Tensor:
        """``x`` ``(B, N, C)`` → ``(B, N, C)``."""
        b, s, n, d = x.shape[0], x.shape[1], self.num_heads, self.head_dim
        q = apply_rope(self.norm_q(self.q(x)).view(b, s, n, d), freqs)  # (B, N, H, d)
        k = apply_rope(self.norm_k(self.k(x)).view(b, s, n, d), freqs)
        v = self.v(x).view(b, s, n, d)
        out = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), run)  # (B, H, N, d)
        return self.o(out.transpose(1, 2).reshape(b, s, n * d))


class WanCrossAttention(nn.Module):
    """Cross-attention to the text tokens (and, for I2V, to the CLIP image tokens in front of them)."""

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        dim = config.dim
        self.num_heads = config.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=config.eps) if config.qk_norm else nn.Identity()
        self.has_image = config.model_type == "i2v"
        if self.has_image:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = nn.RMSNorm(dim, eps=config.eps) if config.qk_norm else nn.Identity()

    def forward(self, x: Tensor, context: Tensor, context_img_len: int = 0) -> Tensor:
        """``x`` ``(B, N, C)``, ``context`` ``(B, L, C)`` (image tokens first) → ``(B, N, C)``."""
        text = context[:, context_img_len:]
        q = self.norm_q(self.q(x))
        out = self._attend(q, self.norm_k(self.k(text)), self.v(text))
        if self.has_image and context_img_len:
            image = context[:, :context_img_len]
            out = out + self._attend(q, self.norm_k_img(self.k_img(image)), self.v_img(image))
        return self.o(out)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, h = q.shape[0], self.num_heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))  # (B, H, ·, d)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])


# ------------------------------------------------------------------------------------------------
# blocks, head, model
# ------------------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """One Wan2.1 transformer block (adaLN-modulated self-attention, cross-attention, FFN)."""

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        dim = config.dim
        self.norm1 = nn.LayerNorm(dim, config.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(config)
        self.norm3 = nn.LayerNorm(dim, config.eps) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(config)
        self.norm2 = nn.LayerNorm(dim, config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(
        self, x: Tensor, e0: Tensor, freqs: Tensor, context: Tensor, context_img_len: int, run: ReHyAtRun
    ) -> Tensor:
        """``x`` ``(B, N, C)``, ``e0`` ``(B, 1, 6, C)`` → ``(B, N, C)``."""
        e = (self.modulation.to(x.dtype).unsqueeze(0) + e0).unbind(2)  # 6 × (B, 1, C)
        x = x.contiguous()
        y = self.self_attn(torch.addcmul(e[0], self.norm1(x), 1 + e[1]), freqs, run)
        x = torch.addcmul(x, y, e[2])
        x = x + self.cross_attn(self.norm3(x), context, context_img_len)
        y = self.ffn(torch.addcmul(e[3], self.norm2(x), 1 + e[4]))
        return torch.addcmul(x, y, e[5])


class WanHead(nn.Module):
    """Output head: modulated LayerNorm and a linear map to ``out_dim × patch`` values per token."""

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, config.dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """``x`` ``(B, N, C)``, ``e`` ``(B, 1, C)`` → ``(B, N, out_dim · patch)``."""
        shift, scale = (self.modulation.to(x.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class WanImageEmbedding(nn.Module):
    """I2V's ``img_emb``: CLIP vision features ``(B, L, clip_dim)`` → context tokens ``(B, L, dim)``."""

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        clip = config.clip_dim
        self.proj = nn.Sequential(
            nn.LayerNorm(clip),
            nn.Linear(clip, clip),
            nn.GELU(),
            nn.Linear(clip, config.dim),
            nn.LayerNorm(config.dim),
        )
        tokens = config.flf_pos_embed_token_number
        self.emb_pos = nn.Parameter(torch.zeros(1, tokens, clip)) if tokens else None

    def forward(self, image_embeds: Tensor) -> Tensor:
        if self.emb_pos is not None:
            n = self.emb_pos.shape[1]
            image_embeds = image_embeds[:, :n] + self.emb_pos[:, : image_embeds.shape[1]].to(image_embeds)
        return self.proj(image_embeds)


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


# ------------------------------------------------------------------------------------------------
# state dicts
# ------------------------------------------------------------------------------------------------


def pad_to_patch(x: Tensor, patch_size: tuple[int, int, int]) -> Tensor:
    """Circular-pad ``(B, C, T, H, W)`` up to multiples of the patch size (as ComfyUI does)."""
    pads: list[int] = []
    for size, patch in zip(reversed(x.shape[2:]), reversed(patch_size), strict=True):
        pads += [0, (patch - size % patch) % patch]
    return F.pad(x, pads, mode="circular") if any(pads) else x


def canonical_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Wan2.1 state dict in the original key names (prefix removed, diffusers names renamed)."""
    from ..keymap import detect_layout, diffusers_state_dict_to_wan

    if any(k.startswith(COMFYUI_PREFIX) for k in state_dict):  # a whole ComfyUI checkpoint
        state_dict = {
            k[len(COMFYUI_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(COMFYUI_PREFIX)
        }
    try:
        layout = detect_layout(state_dict)
    except ValueError:
        layout = "wan"
    if layout == "diffusers":
        return diffusers_state_dict_to_wan(state_dict)
    return dict(state_dict)


def detect_config(state_dict: Mapping[str, Tensor], *, num_heads: int | None = None) -> WanDiTConfig:
    """The :class:`WanDiTConfig` of a Wan2.1 state dict (original key names), from its shapes.

    ``num_heads`` cannot be read off any shape; it defaults to ``dim // 128`` (every released
    Wan2.1 model, and ComfyUI's assumption).
    """
    required = (
        "head.modulation",
        "head.head.weight",
        "patch_embedding.weight",
        "blocks.0.ffn.0.weight",
        "text_embedding.0.weight",
        "time_embedding.0.weight",
    )
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a Wan2.1 transformer state dict: missing {missing}")
    dim = state_dict["head.modulation"].shape[-1]
    patch = tuple(int(s) for s in state_dict["patch_embedding.weight"].shape[2:])
    if num_heads is None:
        if dim % 128:
            raise ValueError(f"dim {dim} is not a multiple of 128: pass num_heads explicitly")
        num_heads = dim // 128
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    flf = state_dict.get("img_emb.emb_pos")
    return WanDiTConfig(
        dim=dim,
        ffn_dim=state_dict["blocks.0.ffn.0.weight"].shape[0],
        num_heads=num_heads,
        num_layers=max(blocks) + 1,
        in_dim=state_dict["patch_embedding.weight"].shape[1],
        out_dim=state_dict["head.head.weight"].shape[0] // math.prod(patch),
        text_dim=state_dict["text_embedding.0.weight"].shape[1],
        freq_dim=state_dict["time_embedding.0.weight"].shape[1],
        patch_size=patch,
        model_type="i2v" if "img_emb.proj.0.weight" in state_dict else "t2v",
        qk_norm="blocks.0.self_attn.norm_q.weight" in state_dict,
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
        flf_pos_embed_token_number=None if flf is None else flf.shape[1],
        clip_dim=state_dict["img_emb.proj.0.weight"].shape[0]
        if "img_emb.proj.0.weight" in state_dict
        else CLIP_DIM,
    )
