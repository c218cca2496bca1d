"""Sizes, repeats and time budgets of ``python -m rehyat gpu-check`` (full GPU run and ``--tiny``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config import FeatureMapConfig
from ..profiling.presets import PRESETS, WanShape

PARTS: tuple[str, ...] = ("op_correct", "op_speed", "dit", "sampler")


@dataclass(frozen=True)
class GpuCheckConfig:
    """Everything a gpu-check run measures (defaults: the full run at Wan2.1-1.3B's shapes, 480×832).

    Attributes:
        device: "cuda[:i]" or "cpu".
        tiny: toy sizes (CI); the figures then say nothing about a GPU.
        heads, head_dim, tokens_per_frame: the attention layout of op_correct / op_speed.
        chunk_frames, overlap_frames, feature_map: the ReHyAt configuration (the paper's default).
        correct_frames: latent frames op_correct checks. speed_frames: latent frames op_speed times.
        repeats: timed repeats per op_speed case (median).
        compile: also time the ReHyAt forms with torch.compile'd φ.
        dit_shape: the DiT of the dit part (random weights). dit_video_frames: its lengths.
        dit_latent_hw: latent height × width (60 × 104 = 480 × 832 px). dit_parallel_blocks: blocks
            the parallel case converts.
        sampler_video_frames, sampler_size (height, width px), sampler_dim / ffn_dim / layers /
            text_len, cfg, steps: the sampler part (through ComfyUI).
        budgets: seconds per part; a part past its budget is stopped and recorded as skipped.
    """

    device: str = "cuda"
    tiny: bool = False
    heads: int = 12
    head_dim: int = 128
    tokens_per_frame: int = 1560
    chunk_frames: int = 3
    overlap_frames: int = 1
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    correct_frames: tuple[int, ...] = (7, 14, 21)
    speed_frames: tuple[int, ...] = (21, 41, 81, 121)
    repeats: int = 5
    compile: bool = False
    dit_shape: WanShape = PRESETS["wan2.1-1.3b"]
    dit_video_frames: tuple[int, ...] = (81, 161, 321, 481)
    dit_latent_hw: tuple[int, int] = (60, 104)
    dit_parallel_blocks: int = 15
    sampler_video_frames: int = 481
    sampler_size: tuple[int, int] = (480, 832)
    sampler_dim: int = 1536
    sampler_ffn_dim: int = 8960
    sampler_layers: int = 30
    sampler_text_len: int = 512
    cfg: float = 5.0
    steps: int = 1
    budgets: dict[str, float] = field(default_factory=lambda: {
        "op_correct": 90.0, "op_speed": 120.0, "dit": 180.0, "sampler": 90.0})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (round-trips through :meth:`from_dict`)."""
        data = asdict(self)
        data["dit_shape"] = self.dit_shape.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuCheckConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["feature_map"] = FeatureMapConfig.from_dict(data["feature_map"])
        shape = dict(data["dit_shape"])
        shape["patch"] = tuple(shape["patch"])
        data["dit_shape"] = WanShape(**shape)
        for key in ("correct_frames", "speed_frames", "dit_video_frames", "dit_latent_hw", "sampler_size"):
            data[key] = tuple(data[key])
        return cls(**data)


def tiny_config(device: str = "cpu", **overrides: Any) -> GpuCheckConfig:
    """Toy sizes for every part (seconds on a CPU): the CI run of the whole command."""
    config = GpuCheckConfig(
        device=device, tiny=True, heads=2, head_dim=32, tokens_per_frame=16,
        feature_map=FeatureMapConfig(hidden_dim=32, feature_dim=32), correct_frames=(7,), speed_frames=(6, 9),
        repeats=2, dit_shape=WanShape("tiny", dim=64, num_layers=2, num_heads=2, ffn_dim=128, text_len=8,
                                      text_dim=32),
        dit_video_frames=(9, 17), dit_latent_hw=(8, 8), dit_parallel_blocks=1, sampler_video_frames=17,
        sampler_size=(32, 48), sampler_dim=128, sampler_ffn_dim=256, sampler_layers=2, sampler_text_len=8)
    return replace(config, **overrides)
