"""The same Wan weights and φ file in ComfyUI and diffusers give the same ReHyAt model."""

from __future__ import annotations

import pytest
import torch
from comfy_support import comfy_or_skip, requires_comfyui

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.integrations import diffusers_wan
from rehyat.integrations.comfyui_wan import load_phi_for_comfy, patch_comfy_wan, save_phi_from_comfy
from rehyat.keymap import diffusers_state_dict_to_wan
from rehyat.weights import (
    BaseModelInfo,
    apply_phi_tensors,
    check_compatible,
    fingerprint_module,
    load_phi_weights,
)

pytestmark = requires_comfyui
diffusers = pytest.importorskip("diffusers", reason="diffusers not installed: pip install -e '.[diffusers]'")

# ComfyUI's Wan detection fixes head_dim 128, freq_dim 256 and text_dim 4096.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
            eps=1e-6, rope_max_seq_len=1024)
CONFIG = ConversionConfig(attention=HybridAttentionConfig(
    chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(hidden_dim=32, feature_dim=32)))


def diffusers_model(seed: int):
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(**TINY)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def comfy_patcher(model):
    comfy_or_skip()
    import comfy.sd

    wan_sd = {k: v.clone() for k, v in diffusers_state_dict_to_wan(model.state_dict()).items()}
    return comfy.sd.load_diffusion_model_state_dict(wan_sd, model_options={"dtype": torch.float32})


def comfy_velocity(clone, x, t, context):
    clone.patch_model()
    try:
        return clone.model.diffusion_model(x, t, context, transformer_options={"wrappers": clone.wrappers})
    finally:
        clone.unpatch_model()


def randomised_phi(clone, seed=5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in clone.attachments["rehyat"].hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
@torch.inference_mode()
def test_phi_file_gives_the_same_model_in_comfyui_and_diffusers(tmp_path, mode):
    model = diffusers_model(seed=0)
    patcher = comfy_patcher(model)
    clone = patch_comfy_wan(patcher, CONFIG, forward_mode=mode)
    randomised_phi(clone)
    path = save_phi_from_comfy(clone, tmp_path / "phi.safetensors")

    phi = load_phi_weights(path)
    base = BaseModelInfo(dim=256, num_heads=2, num_layers=2)
    check_compatible(phi, base, fingerprint_module(model, "diffusers"))
    hybrid = diffusers_wan.build_hybrid_modules(model, phi.config, phi.blocks)
    apply_phi_tensors(hybrid, phi.tensors)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 5, 6, 8, generator=gen)
    context = torch.randn(1, 13, 4096, generator=gen)
    t = torch.tensor([637.0])
    softmax = model(x, t, context, return_dict=False)[0]
    expected = comfy_velocity(clone, x, t, context)
    with diffusers_wan.patch_diffusers_wan(model, phi.config, hybrid, forward_mode=mode):
        got = model(x, t, context, return_dict=False)[0]
    assert (expected - softmax).abs().max() > 1e-3  # ReHyAt really active
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # the same file loads back into ComfyUI with identical φ
    config, comfy_hybrid = load_phi_for_comfy(patcher, path)
    assert config == CONFIG
    reloaded = patch_comfy_wan(patcher, config, comfy_hybrid, forward_mode=mode)
    torch.testing.assert_close(comfy_velocity(reloaded, x, t, context), expected, atol=0, rtol=0)


@torch.inference_mode()
def test_phi_file_refuses_a_different_base_model(tmp_path):
    clone = patch_comfy_wan(comfy_patcher(diffusers_model(seed=0)), CONFIG)
    path = save_phi_from_comfy(clone, tmp_path / "phi.safetensors")
    other = comfy_patcher(diffusers_model(seed=1))
    with pytest.raises(ValueError, match="fingerprint"):
        load_phi_for_comfy(other, path)
    with pytest.raises(ValueError, match="fingerprint"):
        check_compatible(load_phi_weights(path), BaseModelInfo(256, 2, 2),
                         fingerprint_module(diffusers_model(seed=1), "diffusers"))
    with pytest.raises(ValueError, match="not ReHyAt-patched"):
        save_phi_from_comfy(other, tmp_path / "nothing.safetensors")
    assert not (tmp_path / "nothing.safetensors").exists()
