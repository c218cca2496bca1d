"""The layers of Wan2.1's DiT: timestep / RoPE embeddings, self- and cross-attention, block, head.

Same parameter names and numbers as ComfyUI's ``comfy.ldm.wan.model``; assembled by
:class:`rehyat.models.wan.WanDiT`. Tokens are frame-major (see :mod:`rehyat.models.wan`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hybrid import FrameGrid, ReHyAtRun
from .wan_config import WanDiTConfig

ROPE_THETA = 10000.0


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


def pad_to_patch(x: Tensor, patch_size: tuple[int, int, int]) -> Tensor:
    """Circular-pad ``(B, C, T, H, W)`` up to multiples of the patch size (as ComfyUI does)."""
    pads: list[int] = []
    for size, patch in zip(reversed(x.shape[2:]), reversed(patch_size), strict=True):
        pads += [0, (patch - size % patch) % patch]
    return F.pad(x, pads, mode="circular") if any(pads) else x


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
# block, head, image embedding
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
