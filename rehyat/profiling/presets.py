"""Model shapes (Wan2.1 presets or a live model's) and the latent grid a profile runs on."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..config import require_int
from ..video_latent import WAN_SPACE_STRIDE, video_frame_count


@dataclass(frozen=True)
class WanShape:
    """The sizes of a Wan2.1 DiT that its FLOPs depend on.

    Attributes:
        name: label in reports.
        dim: model width D (= heads × head_dim).
        num_layers: DiT blocks.
        num_heads: attention heads (head_dim = dim / num_heads).
        ffn_dim: hidden width of each block's FFN.
        text_len: text tokens the cross-attention sees (Wan2.1 pads T5 prompts to 512).
        text_dim: width of the text encoder's tokens (umT5-XXL: 4096).
        in_dim, out_dim: latent channels in and out (T2V: 16 and 16).
        freq_dim: sinusoidal timestep-embedding width.
        patch: (t, h, w) patch size of the patch embedding.
    """

    name: str
    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    text_len: int = 512
    text_dim: int = 4096
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "num_heads", "ffn_dim", "text_len", "text_dim", "in_dim", "out_dim",
                     "freq_dim"):
            require_int(name, getattr(self, name), low=1)
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        object.__setattr__(self, "patch", tuple(self.patch))
        if len(self.patch) != 3:
            raise ValueError(f"patch must be (t, h, w); got {self.patch!r}")
        for size in self.patch:
            require_int("patch[i]", size, low=1)

    @property
    def head_dim(self) -> int:
        """d = dim / num_heads."""
        return self.dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["patch"] = list(self.patch)
        return data


PRESETS: dict[str, WanShape] = {
    "wan2.1-1.3b": WanShape("wan2.1-1.3b", dim=1536, num_layers=30, num_heads=12, ffn_dim=8960),
    "wan2.1-14b": WanShape("wan2.1-14b", dim=5120, num_layers=40, num_heads=40, ffn_dim=13824),
}


def get_preset(name: str) -> WanShape:
    """The preset called ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {name!r}")
    return PRESETS[key]


def shape_of_wan_module(wan: Any, *, name: str = "connected model", text_len: int = 512) -> WanShape:
    """Read a :class:`WanShape` off a Wan DiT module (ComfyUI's ``WanModel`` or alike; duck-typed)."""
    blocks = getattr(wan, "blocks", None)
    if not blocks or not hasattr(wan, "dim") or not hasattr(wan, "num_heads"):
        raise TypeError(f"expected a Wan2.1 DiT (with .blocks, .dim, .num_heads); got {type(wan).__name__}")
    ffn_dim = blocks[0].ffn[0].out_features
    text_dim = wan.text_embedding[0].in_features
    return WanShape(name, dim=int(wan.dim), num_layers=len(blocks), num_heads=int(wan.num_heads),
                    ffn_dim=int(ffn_dim), text_len=text_len, text_dim=int(text_dim),
                    in_dim=int(wan.patch_embedding.in_channels), out_dim=int(wan.out_dim),
                    freq_dim=int(wan.freq_dim), patch=tuple(int(p) for p in wan.patch_size))


@dataclass(frozen=True)
class LatentGrid:
    """A video latent in latent units: T frames × H × W cells (before the DiT's 2×2 patching).

    480×832 px, 81 frames is ``LatentGrid(21, 60, 104)``: 30×52 = 1560 tokens per frame after patching
    (the paper's "latent size 21×30×52" counts these patched tokens).
    """

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            require_int(f"latent {name}", getattr(self, name), low=1)

    def with_frames(self, frames: int) -> LatentGrid:
        """The same frame size with another number of latent frames."""
        return LatentGrid(frames, self.height, self.width)

    def token_grid(self, patch: tuple[int, int, int] = (1, 2, 2)) -> tuple[int, int, int]:
        """(frames, height, width) in tokens after patching (padded up, as ComfyUI pads)."""
        pt, ph, pw = patch
        return math.ceil(self.frames / pt), math.ceil(self.height / ph), math.ceil(self.width / pw)

    def tokens_per_frame(self, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
        """P = (H / 2)·(W / 2) tokens per latent frame for Wan's 2×2 patches."""
        _, h, w = self.token_grid(patch)
        return h * w

    @property
    def video_frames(self) -> int:
        """Pixel-space frames of the video this latent decodes to (1 + 4·(T − 1))."""
        return video_frame_count(self.frames)

    @property
    def pixels(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height * WAN_SPACE_STRIDE, self.width * WAN_SPACE_STRIDE

    def label(self) -> str:
        """``"21x60x104"``."""
        return f"{self.frames}x{self.height}x{self.width}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the derived sizes."""
        h, w = self.pixels
        return {"frames": self.frames, "height": self.height, "width": self.width,
                "tokens_per_frame": self.tokens_per_frame(), "tokens": self.frames * self.tokens_per_frame(),
                "video_frames": self.video_frames, "pixels": f"{h}x{w}"}


_LATENT = re.compile(r"^\s*(-?\d+)\s*[xX×]\s*(-?\d+)\s*[xX×]\s*(-?\d+)\s*$")


def parse_latent(text: str) -> LatentGrid:
    """``"21x60x104"`` → ``LatentGrid(21, 60, 104)`` (T × H × W in latent units)."""
    match = _LATENT.match(str(text))
    if not match:
        raise ValueError(f"latent must be T x H x W in latent units, e.g. 21x60x104; got {text!r}")
    return LatentGrid(*(int(g) for g in match.groups()))


def parse_token_grid(text: str, patch: tuple[int, int] = (2, 2)) -> LatentGrid:
    """The paper's latent notation: ``"21x30x52"`` is T × H' × W' of the 2×2-patched token grid
    (480×832 px, 81 frames, 1560 tokens per frame) → ``LatentGrid(21, 60, 104)`` in latent cells."""
    match = _LATENT.match(str(text))
    if not match:
        raise ValueError(f"latent must be T x H x W in patched tokens, e.g. 21x30x52; got {text!r}")
    frames, height, width = (int(g) for g in match.groups())
    return LatentGrid(frames, height * patch[0], width * patch[1])
