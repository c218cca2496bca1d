"""Wan2.1's rectified-flow objective and a matching Euler sampler.

The parameterisation is the one ComfyUI (``comfy.model_sampling.CONST`` + ``ModelSamplingDiscreteFlow``)
and Wan use:

- noising:   x_t = (1 − σ)·x0 + σ·noise,   σ ∈ [0, 1] (σ = 1 is pure noise);
- target:    the velocity v = dx_t/dσ = noise − x0;
- model:     ``model_fn(x_t, t, context) -> v_pred`` called with the timestep t = σ·1000;
- shift:     σ' = shift·σ / (1 + (shift − 1)·σ)  (``comfy.model_sampling.time_snr_shift``); shift > 1
             spends more of training (and sampling) at high noise, which video models need.

Training σ are drawn from a base distribution on (0, 1) ("uniform" or "logit_normal", SD3's
σ = sigmoid(N(m, s))) and then shifted. All randomness comes from an explicit CPU
``torch.Generator`` so a run is reproducible on any device and any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..config import require_int, require_real

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""``model_fn(x_t, t, context) -> v_pred``: x_t (B, C, T, H, W), t (B,) = σ·1000, v_pred like x_t."""

TimestepSampling = Literal["uniform", "logit_normal"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")
TIMESTEP_MULTIPLIER = 1000.0  # Wan / ComfyUI: t = σ · 1000
DEFAULT_TRAIN_SHIFT = 5.0  # DiffSynth-Studio's Wan2.1 training shift; ComfyUI samples Wan2.1 with 8


@dataclass(frozen=True)
class FlowMatchingConfig:
    """How training timesteps are drawn.

    Attributes:
        shift: Wan's timestep shift applied to every drawn σ, in [0.01, 100] (1 = no shift).
        sampling: base distribution of σ before the shift: "uniform" on (0, 1) or "logit_normal"
            (σ = sigmoid(N(logit_mean, logit_std))).
        logit_mean: mean of the logit-normal's normal, in [-10, 10].
        logit_std: standard deviation of the logit-normal's normal, in [0.01, 10].
        sigma_min: σ never falls below this (a σ of exactly 0 teaches nothing), in [0, 0.5].
        sigma_max: σ never exceeds this, in [0.5, 1].
    """

    shift: float = DEFAULT_TRAIN_SHIFT
    sampling: TimestepSampling = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_min: float = 1e-3
    sigma_max: float = 1.0

    def __post_init__(self) -> None:
        require_real("shift", self.shift, low=0.01, high=100.0)
        if self.sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"sampling must be one of {TIMESTEP_SAMPLINGS}; got {self.sampling!r}")
        require_real("logit_mean", self.logit_mean, low=-10.0, high=10.0)
        require_real("logit_std", self.logit_std, low=0.01, high=10.0)
        require_real("sigma_min", self.sigma_min, low=0.0, high=0.5)
        require_real("sigma_max", self.sigma_max, low=0.5, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's shift σ' = shift·σ / (1 + (shift − 1)·σ); identity for shift = 1; maps 0→0 and 1→1."""
    require_real("shift", shift, low=0.01, high=100.0)
    if shift == 1.0:
        return sigma
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep for a noise level: t = σ · 1000 (ComfyUI's ``ModelSamplingDiscreteFlow``)."""
    return sigma * TIMESTEP_MULTIPLIER


def sample_sigmas(
    batch: int, *, generator: torch.Generator, config: FlowMatchingConfig | None = None
) -> torch.Tensor:
    """Draw ``batch`` shifted training noise levels σ (float32 on the CPU), shape (batch,)."""
    config = config or FlowMatchingConfig()
    if config.sampling == "uniform":
        base = torch.rand(batch, generator=generator, dtype=torch.float32)
    else:
        normal = torch.randn(batch, generator=generator, dtype=torch.float32)
        base = torch.sigmoid(config.logit_mean + config.logit_std * normal)
    sigma = shift_sigma(base, config.shift)
    return sigma.clamp(config.sigma_min, config.sigma_max)


def noised_sample(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·noise with σ (B,) broadcast over x0's (B, ...) trailing dims."""
    s = _per_sample(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity dx_t/dσ = noise − x0."""
    return noise - x0


def flow_matching_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    context: Any,
    *,
    generator: torch.Generator | None = None,
    shift: float | None = None,
    config: FlowMatchingConfig | None = None,
    noise: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    reduction: Literal["mean", "none"] = "mean",
    weight: torch.Tensor | None = None,
    target_fn: ModelFn | None = None,
) -> torch.Tensor:
    """Wan2.1's flow-matching loss: MSE between ``model_fn(x_t, σ·1000, context)`` and noise − x0.

    Args:
        model_fn: the velocity model, ``model_fn(x_t, t, context) -> v_pred``.
        x0: clean latents (B, C, T, H, W) (any (B, ...) shape works).
        context: passed to ``model_fn`` untouched (e.g. text embeddings (B, L, D)).
        generator: CPU generator for the noise and σ that are not given.
        shift: overrides ``config.shift`` when given.
        config: timestep sampling (defaults: :class:`FlowMatchingConfig`).
        noise: explicit noise like x0 (drawn from ``generator`` when None).
        sigma: explicit noise levels (B,) in [0, 1], used as-is (not shifted again).
        reduction: "mean" → scalar; "none" → per-sample losses (B,) (mean over each sample's elements).
        weight: optional non-negative element weights broadcastable to x0 (e.g. more weight where
            the clip has content); each sample's loss is then its weighted mean.
        target_fn: optional teacher velocity ``target_fn(x_t, t, context)`` used as the target instead
            of noise − x0 (run without gradients). The teacher's velocity is E[noise − x0 | x_t], so the
            loss has the same minimiser for a student that sees all of x_t, with far less variance; a
            causal student converges to E[noise − x0 | what it sees] either way.

    Returns:
        The loss in float32 (the model may run in bf16 under autocast).
    """
    config = config or FlowMatchingConfig()
    if shift is not None:
        config = FlowMatchingConfig(**{**config.to_dict(), "shift": shift})
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    batch = x0.shape[0]
    if (noise is None or sigma is None) and generator is None:
        raise ValueError("generator is required unless both noise and sigma are given")
    if sigma is None:
        sigma = sample_sigmas(batch, generator=generator, config=config)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must have shape ({batch},) (one per sample); got {tuple(sigma.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.dtype)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}; got {tuple(noise.shape)}")
    noise = noise.to(x0.device, x0.dtype)
    sigma = sigma.to(x0.device, torch.float32)
    x_t = noised_sample(x0.float(), noise.float(), sigma).to(x0.dtype)  # (B, C, T, H, W)
    v_pred = model_fn(x_t, sigma_to_timestep(sigma), context)
    if v_pred.shape != x0.shape:
        raise ValueError(f"model_fn returned shape {tuple(v_pred.shape)}; expected x0's {tuple(x0.shape)}")
    if target_fn is None:
        target = velocity_target(x0.float(), noise.float())
    else:
        with torch.no_grad():
            target = target_fn(x_t, sigma_to_timestep(sigma), context).float()
        if target.shape != x0.shape:
            raise ValueError(
                f"target_fn returned shape {tuple(target.shape)}; expected x0's {tuple(x0.shape)}"
            )
    per_element = F.mse_loss(v_pred.float(), target, reduction="none")
    if weight is None:
        per_sample = per_element.flatten(1).mean(dim=1)  # (B,)
    else:
        weight = torch.broadcast_to(weight.to(per_element.device, torch.float32), per_element.shape)
        if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
            raise ValueError("weight must be finite and non-negative")
        weighted = (per_element * weight).flatten(1).sum(dim=1)  # (B,)
        per_sample = weighted / weight.flatten(1).sum(dim=1).clamp_min(1e-12)
    return per_sample.mean() if reduction == "mean" else per_sample


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The Euler schedule: ``steps + 1`` shifted σ from 1 down to 0 (float32), like ComfyUI's "simple"."""
    require_int("steps", steps, low=1)
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32), shift)


@torch.no_grad()
def euler_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    context: Any,
    *,
    steps: int,
    shift: float = DEFAULT_TRAIN_SHIFT,
    negative_context: Any = None,
    guidance: float = 1.0,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/dσ = v from σ = 1 (``noise``) to σ = 0 with Euler steps; returns the clean latent.

    With ``negative_context`` and ``guidance`` ≠ 1, classifier-free guidance combines the two
    predictions as v_neg + guidance·(v_pos − v_neg). ``callback(step_index, x)`` runs after each step.
    """
    require_real("guidance", guidance, low=0.0, high=100.0)
    sigmas = sampling_sigmas(steps, shift)
    x = noise.clone()
    batch = x.shape[0]
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t = sigma_to_timestep(sigma.expand(batch)).to(x.device)
        v = model_fn(x, t, context).to(x.dtype)
        if negative_context is not None and guidance != 1.0:
            v_neg = model_fn(x, t, negative_context).to(x.dtype)
            v = v_neg + guidance * (v - v_neg)
        x = x + (sigma_next - sigma).item() * v
        if callback is not None:
            callback(i, x)
    return x


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """σ (B,) reshaped to (B, 1, ..., 1) to broadcast over ``like``."""
    return sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)
