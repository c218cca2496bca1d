"""Wan2.1's rectified-flow objective (rehyat/training/flow_matching.py) against ComfyUI's own maths."""

from __future__ import annotations

import pytest
import torch
from comfy_support import requires_comfyui

from rehyat.training.flow_matching import (
    FlowMatchingConfig,
    euler_sample,
    flow_matching_loss,
    noised_sample,
    sample_sigmas,
    sampling_sigmas,
    shift_sigma,
    sigma_to_timestep,
    velocity_target,
)


def test_shift_sigma_formula_and_endpoints() -> None:
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_sigma(sigma, 5.0)
    expected = 5.0 * sigma / (1 + 4.0 * sigma)  # naive reference
    torch.testing.assert_close(shifted, expected)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0
    assert torch.equal(shift_sigma(sigma, 1.0), sigma)
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(sigma, 0.0)


@requires_comfyui
def test_matches_comfyui_flow_sampling() -> None:
    """Noising, shift and timestep equal comfy's CONST + ModelSamplingDiscreteFlow for Wan (shift 8)."""
    from comfy_support import import_comfyui

    import_comfyui()
    import comfy.model_sampling as ms

    class WanSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    sampling = WanSampling()
    sampling.set_parameters(shift=8.0, multiplier=1000)
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    sigma = torch.tensor([0.3, 0.9])
    torch.testing.assert_close(noised_sample(x0, noise, sigma), sampling.noise_scaling(sigma, noise, x0))
    torch.testing.assert_close(sigma_to_timestep(sigma), sampling.timestep(sigma))
    t = torch.tensor([100.0, 700.0])
    torch.testing.assert_close(shift_sigma(t / 1000, 8.0), sampling.sigma(t))
    # The velocity target makes comfy's denoised = x_t − v·σ exactly x0.
    x_t = noised_sample(x0, noise, sigma)
    denoised = sampling.calculate_denoised(sigma, velocity_target(x0, noise), x_t)
    torch.testing.assert_close(denoised, x0)


def test_sample_sigmas_distributions_are_reproducible_and_in_range() -> None:
    for sampling in ("uniform", "logit_normal"):
        config = FlowMatchingConfig(shift=3.0, sampling=sampling)
        a = sample_sigmas(4096, generator=torch.Generator().manual_seed(1), config=config)
        b = sample_sigmas(4096, generator=torch.Generator().manual_seed(1), config=config)
        assert torch.equal(a, b) and a.dtype == torch.float32
        assert a.min() >= config.sigma_min and a.max() <= 1.0
        assert a.mean() > 0.6  # shift 3 moves mass to high noise (unshifted mean is 0.5)
    with pytest.raises(ValueError, match="sampling"):
        FlowMatchingConfig(sampling="beta")
    with pytest.raises(ValueError, match="logit_std"):
        FlowMatchingConfig(logit_std=0.0)


def test_loss_is_mse_to_velocity_and_zero_for_the_oracle() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 3, 3, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.1, 0.5, 0.95])
    seen = {}

    def oracle(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        seen["t"], seen["context"] = t, context
        s = (t / 1000).reshape(-1, 1, 1, 1, 1)
        return (x_t - x0) / s  # the exact velocity noise − x0 recovered from x_t

    context = torch.ones(3, 5, 7)
    loss = flow_matching_loss(oracle, x0, context, noise=noise, sigma=sigma)
    assert loss.item() < 1e-8
    torch.testing.assert_close(seen["t"], sigma * 1000)
    assert seen["context"] is context
    zero_model = flow_matching_loss(
        lambda x, t, c: torch.zeros_like(x), x0, None, noise=noise, sigma=sigma, reduction="none"
    )
    torch.testing.assert_close(zero_model, (noise - x0).pow(2).flatten(1).mean(1))


def test_loss_draws_from_generator_and_checks_shapes() -> None:
    x0 = torch.randn(2, 4, 1, 2, 2)
    model = torch.nn.Conv3d(4, 4, 1)

    def model_fn(x: torch.Tensor, t: torch.Tensor, c: object) -> torch.Tensor:
        return model(x)

    a = flow_matching_loss(model_fn, x0, None, generator=torch.Generator().manual_seed(3))
    b = flow_matching_loss(model_fn, x0, None, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.requires_grad
    with pytest.raises(ValueError, match="generator"):
        flow_matching_loss(model_fn, x0, None)
    with pytest.raises(ValueError, match="sigma must have shape"):
        flow_matching_loss(model_fn, x0, None, noise=torch.zeros_like(x0), sigma=torch.ones(3))
    with pytest.raises(ValueError, match="model_fn returned shape"):
        flow_matching_loss(lambda x, t, c: x[:, :1], x0, None, generator=torch.Generator())


def test_euler_sample_is_exact_for_straight_flows() -> None:
    """A single-point data set has the exact velocity (x − c)/σ; Euler follows straight lines exactly."""
    target = torch.randn(1, 4, 2, 3, 3)
    noise = torch.randn(1, 4, 2, 3, 3)

    def exact(x: torch.Tensor, t: torch.Tensor, context: object) -> torch.Tensor:
        return (x - target) / (t / 1000).reshape(-1, 1, 1, 1, 1)

    steps = []
    out = euler_sample(exact, noise, None, steps=4, shift=8.0, callback=lambda i, x: steps.append(i))
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)
    assert steps == [0, 1, 2, 3]
    sigmas = sampling_sigmas(4, 8.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and torch.all(sigmas[1:] < sigmas[:-1])


def test_euler_sample_classifier_free_guidance() -> None:
    noise = torch.randn(1, 2, 1, 2, 2)

    def model_fn(x: torch.Tensor, t: torch.Tensor, context: float) -> torch.Tensor:
        return torch.full_like(x, context)

    out = euler_sample(model_fn, noise, 1.0, steps=2, shift=1.0, negative_context=0.0, guidance=3.0)
    torch.testing.assert_close(out, noise - 3.0)  # v = 0 + 3·(1 − 0), integrated over σ 1 → 0
    with pytest.raises(ValueError, match="steps"):
        euler_sample(model_fn, noise, 1.0, steps=0)
