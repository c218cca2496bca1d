"""ReHyAt patching of a real ComfyUI Wan2.1 model (tiny, real key names, real classes)."""

from __future__ import annotations

import pytest
import torch
from comfy_support import (
    WAN_TEXT_DIM,
    comfy_or_skip,
    load_tiny_wan_comfy,
    requires_comfyui,
    tiny_wan_state_dict,
)

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.integrations.comfyui_wan import build_hybrid_modules, comfy_patch_info, patch_comfy_wan

pytestmark = requires_comfyui
SMALL_PHI = FeatureMapConfig(hidden_dim=32, feature_dim=32)


@pytest.fixture(scope="module")
def comfy():
    return comfy_or_skip()


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_wan_state_dict(seed=0)


@pytest.fixture
def patcher(comfy, tiny_sd):
    return load_tiny_wan_comfy(tiny_sd)


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def conversion(num_blocks=None, tc=3, to=1, causal=True) -> ConversionConfig:
    return ConversionConfig(num_blocks=num_blocks, attention=HybridAttentionConfig(
        chunk_frames=tc, overlap_frames=to, causal=causal, feature_map=SMALL_PHI))


def trained_like_phi(patcher, config: ConversionConfig, seed=1):
    """φ modules with random non-trivial weights, so the linear part visibly matters."""
    wan = patcher.get_model_object("diffusion_model")
    hybrid = build_hybrid_modules(wan, config, config.resolve_blocks(len(wan.blocks)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return hybrid


def denoise(clone, latent, sigma, context) -> torch.Tensor:
    """One model call through the clone's patches and wrappers, as sampling does it."""
    clone.patch_model(device_to=clone.load_device)
    try:
        return clone.model.apply_model(latent, sigma, c_crossattn=context,
                                       transformer_options={"wrappers": clone.wrappers})
    finally:
        clone.unpatch_model(device_to=clone.offload_device)


def sample(comfy, patcher, noise, cond, steps=3) -> torch.Tensor:
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds([[cond, {}]], [[torch.zeros_like(cond), {}]])
    guider.set_cfg(3.0)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps)
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                         disable_pbar=True, seed=0)


LATENT = (1, 16, 7, 10, 6)  # 7 latent frames (partial last chunk with Tc=3), 5×3 tokens per frame
SIGMA = torch.tensor([0.8])


@pytest.fixture
def inputs():
    return seeded(LATENT, 2), seeded((1, 12, WAN_TEXT_DIM), 3)


@torch.inference_mode()
def test_original_is_bit_identical_after_the_patched_clone_sampled(comfy, patcher, inputs):
    latent, context = inputs
    wan = patcher.get_model_object("diffusion_model")
    before = patcher.model.apply_model(latent, SIGMA, c_crossattn=context)
    original_attn = [block.self_attn for block in wan.blocks]
    clone = patch_comfy_wan(patcher, conversion(), trained_like_phi(patcher, conversion()))
    patched = sample(comfy, clone, latent, context)
    assert torch.isfinite(patched).all()
    assert not torch.allclose(patched, sample(comfy, patcher, latent, context))
    assert [block.self_attn for block in wan.blocks] == original_attn
    assert patcher.object_patches == {} and "rehyat" not in patcher.wrappers.get("diffusion_model", {})
    assert comfy_patch_info(patcher) is None and comfy_patch_info(clone) is not None
    assert torch.equal(patcher.model.apply_model(latent, SIGMA, c_crossattn=context), before)


@torch.inference_mode()
def test_only_chosen_self_attention_blocks_change(patcher):
    config = conversion(num_blocks=1)
    clone = patch_comfy_wan(patcher, config)
    assert set(clone.object_patches) == {"diffusion_model.blocks.1.self_attn"}
    replaced = clone.object_patches["diffusion_model.blocks.1.self_attn"]
    original = patcher.get_model_object("diffusion_model.blocks.1.self_attn")
    for role in ("q", "k", "v", "o", "norm_q", "norm_k"):  # weights shared, LoRA keys still resolve
        assert getattr(replaced, role) is getattr(original, role)
    clone.patch_model(device_to=clone.load_device)
    try:
        blocks = clone.model.diffusion_model.blocks
        assert type(blocks[0].self_attn).__name__ == "WanSelfAttention"
        assert type(blocks[1].self_attn).__name__ == "ComfyWanReHyAtSelfAttention"
        assert type(blocks[1].cross_attn).__name__ == "WanT2VCrossAttention"
    finally:
        clone.unpatch_model(device_to=clone.offload_device)
    assert type(patcher.model.diffusion_model.blocks[1].self_attn).__name__ == "WanSelfAttention"


@torch.inference_mode()
def test_one_chunk_covering_all_frames_is_the_softmax_model(patcher, inputs):
    latent, context = inputs
    config = conversion(tc=LATENT[2])
    clone = patch_comfy_wan(patcher, config, trained_like_phi(patcher, config))
    expected = patcher.model.apply_model(latent, SIGMA, c_crossattn=context)
    torch.testing.assert_close(denoise(clone, latent, SIGMA, context), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("tc", "to"), [(3, 1), (2, 2), (1, 0)])
@torch.inference_mode()
def test_recurrent_forward_equals_parallel_forward(patcher, inputs, tc, to):
    latent, context = inputs
    config = conversion(tc=tc, to=to)
    hybrid = trained_like_phi(patcher, config)
    parallel = denoise(patch_comfy_wan(patcher, config, hybrid), latent, SIGMA, context)
    recurrent_clone = patch_comfy_wan(patcher, config, hybrid, forward_mode="recurrent")
    recurrent = denoise(recurrent_clone, latent, SIGMA, context)
    softmax = patcher.model.apply_model(latent, SIGMA, c_crossattn=context)
    assert (parallel - softmax).abs().max() > 1e-3  # ReHyAt is really active
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_sampling_recurrent_and_parallel_agree(comfy, patcher, inputs):
    latent, context = inputs
    config = conversion()
    hybrid = trained_like_phi(patcher, config)
    parallel = sample(comfy, patch_comfy_wan(patcher, config, hybrid), latent, context)
    recurrent_clone = patch_comfy_wan(patcher, config, hybrid, forward_mode="recurrent")
    recurrent = sample(comfy, recurrent_clone, latent, context)
    assert torch.isfinite(recurrent).all()
    torch.testing.assert_close(recurrent, parallel, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_grid_follows_the_latent(patcher):
    config = conversion()
    clone = patch_comfy_wan(patcher, config, trained_like_phi(patcher, config))
    context = seeded((1, 12, WAN_TEXT_DIM), 3)
    for shape in [(1, 16, 4, 8, 8), (1, 16, 6, 6, 10)]:
        out = denoise(clone, seeded(shape, 4), SIGMA, context)
        assert out.shape == shape and torch.isfinite(out).all()


def test_recurrent_refuses_softmax_blocks_and_non_causal(patcher):
    with pytest.raises(ValueError, match=r"blocks \[0\] still use softmax attention"):
        patch_comfy_wan(patcher, conversion(num_blocks=1), forward_mode="recurrent")
    with pytest.raises(ValueError, match=r"needs causal ReHyAt blocks"):
        patch_comfy_wan(patcher, conversion(causal=False), forward_mode="recurrent")
    with pytest.raises(ValueError, match=r"forward_mode must be one of"):
        patch_comfy_wan(patcher, conversion(), forward_mode="sweep")


def test_patching_twice_is_refused(patcher):
    clone = patch_comfy_wan(patcher, conversion())
    with pytest.raises(ValueError, match="already ReHyAt-patched"):
        patch_comfy_wan(clone, conversion())


@torch.inference_mode()
def test_other_block_patches_are_refused_not_skipped(comfy, patcher, inputs):
    latent, context = inputs
    config = conversion()
    recurrent = patch_comfy_wan(patcher, config, forward_mode="recurrent")
    passthrough = lambda args, extra: extra["original_block"](args)  # noqa: E731
    recurrent.set_model_patch_replace(passthrough, "dit", "double_block", 0)
    with pytest.raises(ValueError, match="cannot run together with other DiT block patches"):
        sample(comfy, recurrent, latent, context, steps=1)
    parallel = patch_comfy_wan(patcher, config)
    parallel.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v))
    with pytest.raises(ValueError, match="attn1_patch"):
        sample(comfy, parallel, latent, context, steps=1)


@torch.inference_mode()
def test_odd_sized_latent_recurrent_equals_parallel_through_circular_padding(patcher):
    config = conversion(tc=2, to=1)
    hybrid = trained_like_phi(patcher, config)
    latent, context = seeded((1, 16, 5, 7, 5), 5), seeded((1, 12, WAN_TEXT_DIM), 6)  # 7×5: padded to 8×6
    parallel = denoise(patch_comfy_wan(patcher, config, hybrid), latent, SIGMA, context)
    recurrent_clone = patch_comfy_wan(patcher, config, hybrid, forward_mode="recurrent")
    recurrent = denoise(recurrent_clone, latent, SIGMA, context)
    assert parallel.shape == latent.shape
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-5)
    softmax = patcher.model.apply_model(latent, SIGMA, c_crossattn=context)
    assert (parallel - softmax).abs().max() > 1e-3


@torch.inference_mode()
def test_image_to_video_inputs_reach_the_recurrent_forward(comfy):
    from sampler_support import CLIP_VISION_DIM, tiny_wan_i2v_state_dict

    i2v = load_tiny_wan_comfy(tiny_wan_i2v_state_dict())
    config = conversion(tc=2, to=1)
    hybrid = trained_like_phi(i2v, config)
    latent, context = seeded((1, 16, 5, 4, 4), 7), seeded((1, 12, WAN_TEXT_DIM), 8)
    concat = seeded((1, 20, 5, 4, 4), 9)  # mask + image latent channels, per frame
    clip_fea = seeded((1, 257, CLIP_VISION_DIM), 10)

    def run(clone, clip):
        clone.patch_model(device_to=clone.load_device)
        try:
            return clone.model.apply_model(latent, SIGMA, c_concat=concat, c_crossattn=context, clip_fea=clip,
                                           transformer_options={"wrappers": clone.wrappers})
        finally:
            clone.unpatch_model(device_to=clone.offload_device)

    parallel = run(patch_comfy_wan(i2v, config, hybrid), clip_fea)
    recurrent_clone = patch_comfy_wan(i2v, config, hybrid, forward_mode="recurrent")
    recurrent = run(recurrent_clone, clip_fea)
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-5)
    other_image = seeded((1, 257, CLIP_VISION_DIM), 11)
    assert (run(recurrent_clone, other_image) - recurrent).abs().max() > 1e-3  # clip_fea is used


@torch.inference_mode()
def test_other_self_attention_patches_and_overrides_are_refused(comfy, patcher, inputs):
    latent, context = inputs
    output_patched = patch_comfy_wan(patcher, conversion())
    output_patched.set_model_attn1_output_patch(lambda out, extra_options: out)
    with pytest.raises(ValueError, match="attn1_output_patch"):
        sample(comfy, output_patched, latent, context, steps=1)
    overridden = patch_comfy_wan(patcher, conversion(), forward_mode="recurrent")
    overridden.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = (
        lambda func, *args, **kwargs: func(*args, **kwargs))
    with pytest.raises(ValueError, match="optimized_attention_override"):
        sample(comfy, overridden, latent, context, steps=1)
