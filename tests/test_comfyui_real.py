"""Tests against a real, unmodified ComfyUI (0.3.75 via scripts/provision_comfyui.py).

They skip with a clear reason when ComfyUI is not provisioned.  A tiny random
Wan2.1 T2V model (dim 256, 2 layers) keeps every test fast on CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from comfy_support import (
    WAN_TEXT_DIM,
    ComfyModules,
    comfy_or_skip,
    load_tiny_wan_comfy,
    requires_comfyui,
    tiny_wan_config,
    tiny_wan_state_dict,
)

pytestmark = requires_comfyui

LATENT_SHAPE = (1, 16, 5, 8, 8)  # (B, C, T latent frames, H, W)
TOKENS_PER_FRAME = (8 // 2) * (8 // 2)  # patch (1, 2, 2)
TEXT_TOKENS = 12


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Return a seeded float32 standard normal tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def comfy() -> ComfyModules:
    """The real ComfyUI modules (skips clearly when not provisioned)."""
    return comfy_or_skip()


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    """The tiny Wan2.1 state dict shared by this module."""
    return tiny_wan_state_dict(seed=0)


@pytest.fixture
def patcher(comfy: ComfyModules, tiny_sd: dict[str, torch.Tensor]) -> Any:
    """A fresh ModelPatcher for the tiny model, loaded by ComfyUI."""
    return load_tiny_wan_comfy(tiny_sd)


@pytest.fixture
def latent() -> torch.Tensor:
    """A random latent video (16 channels, 5 frames, 8x8)."""
    return _randn(LATENT_SHAPE, seed=1)


@pytest.fixture
def context() -> torch.Tensor:
    """A random text context of umt5-xxl width."""
    return _randn((1, TEXT_TOKENS, WAN_TEXT_DIM), seed=2)


def test_tiny_state_dict_matches_real_wan_model(
    comfy: ComfyModules, tiny_sd: dict[str, torch.Tensor]
) -> None:
    config = tiny_wan_config()
    model = comfy.wan_model.WanModel(**config, operations=comfy.ops.disable_weight_init)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in tiny_sd.items()}
    assert actual == expected
    assert all(torch.count_nonzero(v) > 0 for v in tiny_sd.values())


def test_tiny_state_dict_loads_as_wan21_t2v(
    comfy: ComfyModules, patcher: Any, tiny_sd: dict[str, torch.Tensor]
) -> None:
    model = patcher.model
    assert type(model) is comfy.model_base.WAN21
    assert type(model.model_config) is comfy.supported_models.WAN21_T2V
    diffusion_model = model.diffusion_model
    assert type(diffusion_model) is comfy.wan_model.WanModel
    for key, value in tiny_wan_config().items():
        assert getattr(diffusion_model, key) == value, key
    assert model.get_dtype() == torch.float32
    loaded = diffusion_model.state_dict()
    assert set(loaded) == set(tiny_sd)
    assert all(torch.equal(loaded[k], tiny_sd[k]) for k in tiny_sd)
    assert len(tiny_sd) == 69  # the caller's dict is not consumed by the loader


@torch.inference_mode()
def test_forward_is_finite_deterministic_and_flow_parametrised(
    patcher: Any, latent: torch.Tensor, context: torch.Tensor
) -> None:
    model = patcher.model
    sigma = torch.tensor([0.7])
    denoised = model.apply_model(latent, sigma, c_crossattn=context)
    assert denoised.shape == latent.shape
    assert torch.isfinite(denoised).all()
    assert torch.equal(denoised, model.apply_model(latent, sigma, c_crossattn=context))
    # WAN21 is a FLOW model: timestep = 1000 * sigma, denoised = x - sigma * v.
    velocity = model.diffusion_model(latent, sigma * 1000.0, context)
    assert 0.1 < velocity.std().item() < 10.0
    torch.testing.assert_close(denoised, latent - 0.7 * velocity)
    other = model.apply_model(latent, sigma, c_crossattn=context + 1.0)
    assert not torch.allclose(other, denoised), "text context must matter"


@torch.inference_mode()
def test_rope_options_shift_t_is_relative(
    patcher: Any, latent: torch.Tensor, context: torch.Tensor
) -> None:
    model = patcher.model
    sigma = torch.tensor([0.5])
    base = model.apply_model(latent, sigma, c_crossattn=context)
    shifted = model.apply_model(
        latent,
        sigma,
        c_crossattn=context,
        transformer_options={"rope_options": {"shift_t": 7.0}},
    )
    # RoPE only sees relative positions: a global temporal shift is a no-op.
    torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)
    stretched = model.apply_model(
        latent,
        sigma,
        c_crossattn=context,
        transformer_options={"rope_options": {"scale_t": 2.0}},
    )
    assert (stretched - base).abs().max() > 1e-3


class FrameLocalSelfAttention(torch.nn.Module):
    """Test double of WanSelfAttention whose tokens attend only within their frame."""

    def __init__(
        self, inner: torch.nn.Module, apply_rope1: Any, tokens_per_frame: int
    ) -> None:
        super().__init__()
        self.inner = inner
        self.apply_rope1 = apply_rope1
        self.tokens_per_frame = tokens_per_frame

    def _heads(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        """Reshape (B, L, n*d) to (B, n, frames, tokens, d), applying RoPE if given."""
        b, length, _ = x.shape
        heads = x.view(b, length, self.inner.num_heads, self.inner.head_dim)
        if freqs is not None:
            heads = self.apply_rope1(heads, freqs)
        frames = length // self.tokens_per_frame
        heads = heads.view(b, frames, self.tokens_per_frame, *heads.shape[2:])
        return heads.permute(0, 3, 1, 2, 4)

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        transformer_options: dict | None = None,
    ) -> torch.Tensor:
        """Same signature as WanSelfAttention.forward in ComfyUI 0.3.75."""
        inner = self.inner
        q = self._heads(inner.norm_q(inner.q(x)), freqs)
        k = self._heads(inner.norm_k(inner.k(x)), freqs)
        v = self._heads(inner.v(x), None)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(x.shape)
        return inner.o(out)


def _frame_local_clone(comfy: ComfyModules, patcher: Any) -> Any:
    """Clone ``patcher`` with every block's self-attention made frame-local."""
    clone = patcher.clone()
    for index in range(patcher.model.diffusion_model.num_layers):
        name = f"diffusion_model.blocks.{index}.self_attn"
        local = FrameLocalSelfAttention(
            clone.get_model_object(name), comfy.flux_math.apply_rope1, TOKENS_PER_FRAME
        )
        clone.add_object_patch(name, local)
    return clone


def _denoise_patched(
    clone: Any, latent: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Run apply_model with ``clone``'s object patches applied, then unpatch."""
    clone.patch_model(device_to=clone.load_device)
    try:
        return clone.model.apply_model(latent, sigma, c_crossattn=context)
    finally:
        clone.unpatch_model(device_to=clone.offload_device)


@torch.inference_mode()
def test_only_self_attention_mixes_frames(
    comfy: ComfyModules, patcher: Any, latent: torch.Tensor, context: torch.Tensor
) -> None:
    sigma = torch.tensor([0.9])
    model = patcher.model
    clone = _frame_local_clone(comfy, patcher)
    one_frame = latent[:, :, :1]
    # With a single frame, frame-local attention is exactly the original attention.
    torch.testing.assert_close(
        _denoise_patched(clone, one_frame, sigma, context),
        model.apply_model(one_frame, sigma, c_crossattn=context),
        atol=1e-5,
        rtol=1e-5,
    )
    changed = latent.clone()
    changed[:, :, -1] += 1.0  # perturb the last latent frame only
    base = model.apply_model(latent, sigma, c_crossattn=context)
    assert (model.apply_model(changed, sigma, c_crossattn=context) - base)[
        :, :, 0
    ].abs().max() > 1e-4
    local_base = _denoise_patched(clone, latent, sigma, context)
    local_changed = _denoise_patched(clone, changed, sigma, context)
    # Tokens are frame-major and nothing but self-attention crosses frames.
    torch.testing.assert_close(
        local_changed[:, :, :-1], local_base[:, :, :-1], atol=1e-6, rtol=0
    )
    assert (local_changed[:, :, -1] - local_base[:, :, -1]).abs().max() > 1e-3
    # Unpatching restores the original modules.
    torch.testing.assert_close(
        model.apply_model(latent, sigma, c_crossattn=context), base
    )


def _sample(
    comfy: ComfyModules,
    patcher: Any,
    noise: torch.Tensor,
    cond: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Sample with ComfyUI's CFGGuider + euler, cfg 3, simple schedule."""
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds([[cond, {}]], [[torch.zeros_like(cond), {}]])
    guider.set_cfg(3.0)
    model_sampling = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", steps)
    return guider.sample(
        noise,
        torch.zeros_like(noise),
        comfy.samplers.sampler_object("euler"),
        sigmas,
        disable_pbar=True,
        seed=0,
    )


@torch.inference_mode()
def test_cfg_guider_euler_sampling_runs_on_cpu(
    comfy: ComfyModules, patcher: Any, latent: torch.Tensor, context: torch.Tensor
) -> None:
    calls: list[tuple[list[int], float, tuple[int, ...]]] = []

    def record(
        executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        options = args[
            4
        ]  # (timestep, context, clip_fea, time_dim_concat, transformer_options)
        calls.append(
            (
                list(options["cond_or_uncond"]),
                float(options["sigmas"][0]),
                tuple(x.shape),
            )
        )
        return executor(x, *args, **kwargs)

    steps = 3
    watched = patcher.clone()
    watched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "rehyat-test", record
    )
    samples = _sample(comfy, watched, latent, context, steps)
    assert samples.shape == latent.shape
    assert torch.isfinite(samples).all()
    assert not torch.allclose(samples, latent)
    # One batched cond+uncond call per euler step, at decreasing sigmas.
    assert [sorted(c[0]) for c in calls] == [[0, 1]] * steps
    assert all(c[2] == (2, *LATENT_SHAPE[1:]) for c in calls)
    sigmas = [c[1] for c in calls]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[0] == pytest.approx(1.0)
    # The wrapper lived on the clone only, and sampling is deterministic.
    repeat = _sample(comfy, patcher, latent, context, steps)
    assert len(calls) == steps
    torch.testing.assert_close(repeat, samples)
