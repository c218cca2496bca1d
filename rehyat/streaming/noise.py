"""Noise for ancestral / SDE samplers that does not depend on how the clip is chunked.

A stock sampler draws each step's fresh noise for the whole latent from one generator, so frame f's
noise depends on every other frame's size. Here draw ``i`` of a sampler run gives latent frame ``f``
(absolute index in the clip) noise from a generator seeded by ``(seed, i, f)`` alone: the streaming
order (chunk after chunk, each running the whole sampler) and the sweep order (all frames per step)
inject identical noise. The stream differs from the stock sampler's for the same seed (documented).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK = (1 << 63) - 1


def frame_noise_seed(seed: int, draw: int, frame: int) -> int:
    """A 63-bit generator seed for (seed, draw index, absolute latent frame) — splitmix64 mixing."""
    z = (seed * 0x9E3779B97F4A7C15 + (draw + 1) * 0xBF58476D1CE4E5B9 + (frame + 1) * 0x94D049BB133111EB)
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def frame_noise(seed: int, draw: int, shape: tuple[int, ...], frame_offset: int, *,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise ``shape`` = ``(B, C, n, H, W)`` for absolute frames ``[offset, offset+n)``."""
    if len(shape) != 5:
        raise ValueError(f"frame noise needs a video latent shape (B, C, T, H, W); got {tuple(shape)}")
    b, c, n, h, w = shape
    out = torch.empty(shape, dtype=torch.float32)  # (B, C, n, H, W), drawn on CPU: same on every device
    for local in range(n):
        gen = torch.Generator().manual_seed(frame_noise_seed(seed, draw, frame_offset + local))
        out[:, :, local] = torch.randn((b, c, h, w), generator=gen)
    return out.to(device=device, dtype=dtype)


class FrameNoiseSampler:
    """A k-diffusion ``noise_sampler(sigma, sigma_next)`` drawing :func:`frame_noise` per call.

    Args:
        seed: the run's seed.
        like: a tensor shaped like the sampler's ``x`` ``(B, C, n, H, W)`` (shape, dtype, device).
        frame_offset: absolute index of ``like``'s first latent frame.
    """

    def __init__(self, seed: int, like: Tensor, frame_offset: int = 0):
        self.seed, self.frame_offset = int(seed), frame_offset
        self.shape, self.dtype, self.device = tuple(like.shape), like.dtype, like.device
        self.draws = 0

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        noise = frame_noise(self.seed, self.draws, self.shape, self.frame_offset, dtype=self.dtype,
                            device=self.device)
        self.draws += 1
        return noise


INITIAL_NOISE_DRAW = -1
"""Draw index of a run's starting noise (the sampler's own draws count from 0)."""


def initial_frame_noise(seed: int, shape: tuple[int, ...], frame_offset: int = 0, *,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The starting noise of an **extendable** clip ``(B, C, n, H, W)`` for frames ``[offset, offset+n)``.

    Latent frame ``f`` gets noise from ``(seed, f)`` alone, so a clip of N frames and the first N
    frames of a clip of N + M frames start from the same noise — what extending a clip later needs.
    ComfyUI's KSampler draws one tensor for the whole latent instead (frame f's noise then depends on
    the clip's length), so an extendable clip differs from the KSampler's for the same seed.
    """
    return frame_noise(seed, INITIAL_NOISE_DRAW, shape, frame_offset, dtype=dtype, device=device)
