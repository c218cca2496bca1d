"""The embedded teacher: a small Wan2.1-architecture DiT, its text encoder, and how to run them.

Latent space: each 32×32 RGB frame is folded 4×4 into channels (space-to-depth, exactly
invertible): ``(3, 32, 32) → (48, 8, 8)``; the DiT's 1×2×2 patches then give 4×4 = 16 tokens per
frame, one latent frame per video frame. The DiT is 256 wide with two 128-wide heads (ComfyUI's
loader derives heads = dim / 128) and ``text_dim`` 4096, so its weight file is a Wan2.1 T2V
checkpoint that ComfyUI's own loader accepts.

Why these sizes (quality per CPU-minute): at 16 tokens per frame a 16-frame clip is 256 tokens, so a
training step of 8 clips costs ~0.7 s on one core — 4× cheaper per clip than the previous 64-token
frames at half the width — and the time goes into more updates of a wider model. Shapes of radius
4–6 px still span 1–2 tokens, and the per-token head draws their 8×8-pixel footprint.

Files (in a folder, by default the package's ``rehyat/assets``):
``teacher_dit.safetensors`` (Wan key names), ``teacher_text_encoder.safetensors``,
``teacher.json`` (configs, sampling defaults and how the weights were trained).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..config import require_int, require_real
from ..models.wan import WanDiT, WanDiTConfig
from ..training.flow_matching import euler_sample
from .shapes import ClipSpec
from .text import TextEncoderConfig, TinyTextEncoder

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DIT_FILE = "teacher_dit.safetensors"
TEXT_FILE = "teacher_text_encoder.safetensors"
CONFIG_FILE = "teacher.json"
FOLD = 4  # space-to-depth factor pixels → latent of the shipped teacher


def teacher_dit_config() -> WanDiTConfig:
    """The teacher DiT: width 256 (two 128-wide heads), 4 blocks, RGB folded 4×4 → 48 channels."""
    return WanDiTConfig(
        dim=256,
        ffn_dim=512,
        num_heads=2,
        num_layers=4,
        in_dim=3 * FOLD * FOLD,
        out_dim=3 * FOLD * FOLD,
        text_dim=4096,
        freq_dim=256,
    )


@dataclass(frozen=True)
class SamplingConfig:
    """How the teacher generates: Euler steps on the flow, its shift, and CFG.

    ``shift`` 6 spends more of the 20 steps at high noise, where layout and motion are decided: on 48
    validation pairs (seeds 6,000,000 on, not the held-out ones) continuous motion rose from 94.7 % at
    shift 3 / 4 to 95.1 / 95.7 / 95.4 % at shift 5 / 6 / 8 (30 steps at shift 5: 95.3 %).
    """

    steps: int = 20
    shift: float = 6.0
    guidance: float = 3.0

    def __post_init__(self) -> None:
        require_int("steps", self.steps, low=1, high=1000)
        require_real("shift", self.shift, low=0.01, high=100.0)
        require_real("guidance", self.guidance, low=0.0, high=100.0)


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that defines the teacher's architecture and data."""

    dit: WanDiTConfig = field(default_factory=teacher_dit_config)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    clip: ClipSpec = field(default_factory=ClipSpec)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        fold = math.isqrt(self.dit.in_dim // 3)
        if self.dit.in_dim != 3 * fold * fold or self.clip.size % (fold * self.dit.patch_size[1]):
            raise ValueError(
                f"dit.in_dim ({self.dit.in_dim}) must be 3·fold² with clip.size ({self.clip.size}) a "
                f"multiple of fold·patch"
            )
        if self.text.out_dim != self.dit.text_dim or self.text.max_shapes < self.clip.max_shapes:
            raise ValueError("text.out_dim must equal dit.text_dim and text.max_shapes cover clip.max_shapes")

    @property
    def fold(self) -> int:
        """Space-to-depth factor from pixels to latent (RGB → ``3·fold²`` channels)."""
        return math.isqrt(self.dit.in_dim // 3)

    @property
    def latent_size(self) -> int:
        """Latent height = width."""
        return self.clip.size // self.fold

    @property
    def tokens_per_frame(self) -> int:
        """DiT tokens per latent frame (= per video frame)."""
        return (self.latent_size // self.dit.patch_size[1]) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return {
            "dit": self.dit.to_dict(),
            "text": self.text.to_dict(),
            "clip": self.clip.to_dict(),
            "sampling": asdict(self.sampling),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            dit=WanDiTConfig.from_dict(data["dit"]),
            text=TextEncoderConfig(**data["text"]),
            clip=ClipSpec(**data["clip"]),
            sampling=SamplingConfig(**data["sampling"]),
        )


def pixels_to_latent(pixels: Tensor, fold: int = FOLD) -> Tensor:
    """``(B, 3, T, H, W)`` → ``(B, 3·fold², T, H/fold, W/fold)`` (space-to-depth per frame)."""
    b, c, t, h, w = pixels.shape
    frames = pixels.transpose(1, 2).reshape(b * t, c, h, w)
    return (
        F.pixel_unshuffle(frames, fold).reshape(b, t, c * fold * fold, h // fold, w // fold).transpose(1, 2)
    )


def latent_to_pixels(latent: Tensor, fold: int = FOLD) -> Tensor:
    """Inverse of :func:`pixels_to_latent`: ``(B, 3·fold², T, h, w)`` → ``(B, 3, T, fold·h, fold·w)``."""
    b, c, t, h, w = latent.shape
    frames = latent.transpose(1, 2).reshape(b * t, c, h, w)
    return F.pixel_shuffle(frames, fold).reshape(b, t, c // (fold * fold), h * fold, w * fold).transpose(1, 2)


VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class Teacher(nn.Module):
    """The DiT and text encoder together (``dit``, ``text_encoder``) with generation helpers."""

    def __init__(self, config: TeacherConfig | None = None):
        super().__init__()
        self.config = config or TeacherConfig()
        self.dit = WanDiT(self.config.dit)
        self.text_encoder = TinyTextEncoder(self.config.text)

    def encode(self, prompts: list[str]) -> Tensor:
        """Context features ``(B, L, 4096)`` of ``prompts``."""
        return self.text_encoder.encode(prompts)

    def initial_noise(self, frames: int, seed: int, batch: int = 1) -> Tensor:
        """The starting noise ``(B, C, frames, h, w)`` of a seed (same for every model variant)."""
        require_int("frames", frames, low=1)
        size = self.config.latent_size
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.config.dit.in_dim, frames, size, size, generator=gen)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        frames: int,
        seed: int,
        *,
        velocity: VelocityFn | None = None,
        sampling: SamplingConfig | None = None,
        callback=None,
    ) -> Tensor:
        """Generate a clip: pixels ``(3, frames, size, size)`` in [-1, 1].

        Args:
            prompt: words of the teacher's vocabulary.
            frames: clip length (the teacher was trained on ``config.clip.frames``).
            seed: seed of the initial noise.
            velocity: the model call ``(x, t, context) -> v``; the teacher's softmax DiT by default
                (pass a converted model's recurrent forward to generate with ReHyAt).
            sampling: steps, shift and guidance (defaults: ``config.sampling``).
            callback: ``callback(step_index, x)`` after each Euler step.

        Classifier-free guidance runs the conditional and unconditional rows in one batched model
        call per step.
        """
        sampling = sampling or self.config.sampling
        device = self.dit.patch_embedding.weight.device
        velocity = velocity or self.dit
        contexts = self.encode([prompt, ""])  # (2, L, 4096): prompt, then the empty prompt
        guidance = sampling.guidance

        def guided(x: Tensor, t: Tensor, context: Tensor) -> Tensor:
            if guidance == 1.0:
                return velocity(x, t, context[:1])
            v_pos, v_neg = velocity(x.repeat(2, 1, 1, 1, 1), t.repeat(2), context).chunk(2)
            return v_neg + guidance * (v_pos - v_neg)

        noise = self.initial_noise(frames, seed).to(device)
        latent = euler_sample(
            guided, noise, contexts, steps=sampling.steps, shift=sampling.shift, callback=callback
        )
        return latent_to_pixels(latent, self.config.fold)[0].clamp(-1, 1)

    # --- files ----------------------------------------------------------------------------------

    def save(
        self,
        folder: str | os.PathLike[str],
        training: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> Path:
        """Write the three teacher files into ``folder`` (atomically each, weights stored in ``dtype``
        — fp16 keeps the shipped files small; they load back into fp32 modules); returns the folder."""
        from ..weights import atomic_save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"rehyat_teacher_config": json.dumps(self.config.to_dict())}
        atomic_save_file(
            {k: v.detach().to(dtype).contiguous() for k, v in self.dit.state_dict().items()},
            meta,
            folder / DIT_FILE,
        )
        atomic_save_file(
            {k: v.detach().to(dtype).contiguous() for k, v in self.text_encoder.state_dict().items()},
            meta,
            folder / TEXT_FILE,
        )
        text = json.dumps({"config": self.config.to_dict(), "training": training or {}}, indent=2) + "\n"
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / CONFIG_FILE)
        return folder


def teacher_files_present(folder: str | os.PathLike[str] = ASSETS) -> bool:
    """Whether ``folder`` holds a complete teacher."""
    return all((Path(folder) / name).is_file() for name in (DIT_FILE, TEXT_FILE, CONFIG_FILE))


def load_teacher(folder: str | os.PathLike[str] | None = None) -> Teacher:
    """Load the teacher from ``folder`` (default: the weights shipped in the package), strictly."""
    folder = Path(folder) if folder is not None else ASSETS
    if not teacher_files_present(folder):
        raise FileNotFoundError(
            f"no complete teacher in {folder} (needs {DIT_FILE}, {TEXT_FILE}, {CONFIG_FILE}); "
            "train one with: python -m rehyat train-teacher"
        )
    info = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    teacher = Teacher(TeacherConfig.from_dict(info["config"]))
    teacher.dit.load_state_dict(load_file(folder / DIT_FILE), strict=True)
    teacher.text_encoder.load_state_dict(load_file(folder / TEXT_FILE), strict=True)
    teacher.training_info = info.get("training", {})
    return teacher.eval()
