"""Seeded attention inputs and φ maps shared by the op parts of gpu-check."""

from __future__ import annotations

import torch
from torch import Tensor

from ..feature_maps import FeatureMapPair
from .config import GpuCheckConfig


def attention_inputs(config: GpuCheckConfig, frames: int, dtype: torch.dtype, *, seed: int = 0
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Standard-normal ``q, k, v`` ``(1, H, frames·P, d)`` in ``dtype`` on the config's device."""
    gen = torch.Generator().manual_seed(seed + frames)
    shape = (1, config.heads, frames * config.tokens_per_frame, config.head_dim)
    return tuple(torch.randn(shape, generator=gen).to(config.device, dtype) for _ in range(3))


def feature_maps(config: GpuCheckConfig, *, seed: int = 0) -> FeatureMapPair:
    """An fp32 φ pair on the device, moved apart from its (φq = φk) init as distillation does."""
    torch.manual_seed(seed)
    maps = FeatureMapPair(config.heads, config.head_dim, config.feature_map)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in maps.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return maps.to(config.device).eval()


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
