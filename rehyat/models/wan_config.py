"""The shape of a Wan2.1 DiT (:class:`WanDiTConfig`): widths, depth, patch, T2V or I2V."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..config import require_int, require_real

ModelType = Literal["t2v", "i2v"]
MODEL_TYPES: tuple[str, ...] = ("t2v", "i2v")
CLIP_DIM = 1280  # width of the CLIP vision features an I2V model's img_emb takes


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
