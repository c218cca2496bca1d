"""Flow-matching Euler-ancestral sampling of Wan2.1 (k-diffusion style), one noise stream per trajectory.

Wan2.1 predicts a flow velocity ``v``; the denoised estimate is ``x0 = x − σ·v`` and timesteps are
``1000·σ``. Sigmas follow a shifted linear schedule ``σ(t) = s·t / (1 + (s − 1)·t)`` from 1 to 0
(ComfyUI's flow models, shift 8 for Wan2.1). The ancestral step for rectified flows (as in
k-diffusion's / ComfyUI's ``euler_ancestral`` for flow models) steps deterministically to
``σ_down`` and re-noises to ``σ_next``.

Every trajectory draws its initial and ancestral noise from its own ``torch.Generator`` seeded with
its seed, so a trajectory is the same whichever batch or process samples it — data-parallel
training over trajectories therefore sees the same data as one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flow_sigmas(steps: int, shift: float) -> Tensor:
    """``steps + 1`` sigmas from 1 down to 0 (fp64), shifted by ``shift``."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def trajectory_noise(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per trajectory, seeded with its seed."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def draw(generators: Sequence[torch.Generator], shape: Sequence[int], like: Tensor) -> Tensor:
    """Standard normal noise ``(len(generators), *shape)``, row i from generator i (drawn on the CPU)."""
    rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


def euler_ancestral_step(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, noise: Tensor | None, eta: float
) -> Tensor:
    """One Euler-ancestral step of a rectified-flow sampler from ``sigma`` to ``sigma_next``.

    ``noise`` (same shape as ``x``) is only used when ``eta > 0`` and ``sigma_next > 0``.
    """
    if sigma_next == 0:
        return denoised
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised  # deterministic Euler step to sigma_down
    if eta > 0 and noise is not None:
        renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0) ** 0.5
        x = (alpha_next / alpha_down) * x + noise * renoise
    return x
