"""Wan2.1 I2V and first-last-frame (FLF2V) through the ReHyAt Chunked Sampler with the stock
conditioning nodes (WanImageToVideo, WanFirstLastFrameToVideo) and ComfyUI's real Wan VAE: the
36-channel patch embedding, the concat latent and mask, CLIP-vision features (257 tokens, or 2 × 257
with FLF2V's position embedding) — streaming and sweep equal the stock KSampler, bit for bit."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui
from finetune_support import comfy_stock_nodes
from nodes_support import pack_module
from sampler_support import CLIP_VISION_DIM, tiny_wan_i2v_state_dict
from vae_support import load_tiny_wan_vae

pytestmark = requires_comfyui
SIZE, LENGTH, STEPS, CFG, SEED = 32, 17, 3, 4.0, 3  # 17 video frames → 5 latent frames of 4×4


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def stock_wan_nodes():
    """ComfyUI's ``comfy_extras.nodes_wan``; it imports ``nodes`` (ComfyUI's, not this repo's package)."""
    stock = comfy_stock_nodes()
    saved = sys.modules.get("nodes")
    sys.modules["nodes"] = stock
    try:
        return importlib.import_module("comfy_extras.nodes_wan")
    finally:
        if saved is None:
            del sys.modules["nodes"]
        else:
            sys.modules["nodes"] = saved


def vision_output(seed: int):
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output.penultimate_hidden_states = randn((1, 257, CLIP_VISION_DIM), seed)
    return output


def patched(sd):
    cw, c = pack_module("rehyat.integrations.comfyui_wan"), pack_module("rehyat.config")
    base = load_tiny_wan_comfy(sd)
    config = c.ConversionConfig(attention=c.HybridAttentionConfig(
        chunk_frames=2, overlap_frames=1, feature_map=c.FeatureMapConfig(hidden_dim=16, feature_dim=16)))
    wan = base.get_model_object("diffusion_model")
    hybrid = cw.build_hybrid_modules(wan, config, config.resolve_blocks(len(wan.blocks)))
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return cw.patch_comfy_wan(base, config, hybrid)


@pytest.mark.parametrize("kind", ["i2v", "flf2v"])
@torch.inference_mode()
def test_stock_image_conditioning_samples_exactly_chunk_by_chunk(kind):
    sc = pack_module("nodes.sampling_comfy")  # imports ComfyUI in CPU mode (or skips)
    import comfy.sample

    nodes_wan = stock_wan_nodes()
    model = patched(tiny_wan_i2v_state_dict(flf_tokens=514 if kind == "flf2v" else None))
    wan = model.get_model_object("diffusion_model")
    assert wan.patch_embedding.weight.shape[1] == 36 and wan.img_emb is not None
    assert (wan.img_emb.emb_pos is not None) == (kind == "flf2v")
    vae = load_tiny_wan_vae()
    positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
    negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
    start, end = randn((1, SIZE, SIZE, 3), 4).sigmoid(), randn((1, SIZE, SIZE, 3), 5).sigmoid()
    if kind == "i2v":
        positive, negative, latent = nodes_wan.WanImageToVideo.execute(
            positive, negative, vae, SIZE, SIZE, LENGTH, 1, start_image=start,
            clip_vision_output=vision_output(6)).result
    else:
        positive, negative, latent = nodes_wan.WanFirstLastFrameToVideo.execute(
            positive, negative, vae, SIZE, SIZE, LENGTH, 1, start_image=start, end_image=end,
            clip_vision_start_image=vision_output(6), clip_vision_end_image=vision_output(7)).result
        assert positive[0][1]["clip_vision_output"].penultimate_hidden_states.shape[1] == 514
        assert positive[0][1]["concat_mask"][:, 3, -1].eq(0).all()  # (1, 4, T, h, w): the last frame is given
    assert positive[0][1]["concat_latent_image"].shape[2] == latent["samples"].shape[2] == 5
    noise = comfy.sample.prepare_noise(latent["samples"], SEED)
    stock = comfy.sample.sample(model, noise, STEPS, CFG, "euler", "simple", positive, negative,
                                latent["samples"], seed=SEED, disable_pbar=True)
    for order in ("streaming", "sweep"):
        out, _ = sc.run_chunked_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative,
                                         latent, order=order, disable_pbar=True)
        assert torch.equal(out["samples"], stock), (order, (out["samples"] - stock).abs().max())
    # the image conditioning matters: other CLIP-vision features give another clip
    other = [[c[0], {**c[1], "clip_vision_output": vision_output(8)}] for c in positive]
    changed = comfy.sample.sample(model, noise, STEPS, CFG, "euler", "simple", other, negative,
                                  latent["samples"], seed=SEED, disable_pbar=True)
    assert not torch.equal(changed, stock)
