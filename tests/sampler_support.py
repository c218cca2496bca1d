"""Test helpers of the chunked sampler tests: a tiny Wan2.1 image-to-video model with real key names,
and ReHyAt patching with random, non-trivial φ."""

from __future__ import annotations

import math

import torch
from comfy_support import import_comfyui, tiny_wan_config, tiny_wan_state_dict


def patch_with_random_phi(base, *, chunk_frames: int = 2, overlap_frames: int = 1, phi_seed: int = 7,
                          forward_mode: str = "parallel"):
    """``base`` (a ComfyUI ModelPatcher of a tiny Wan) patched in every block, causal, with random φ
    (σ 0.3, so the linear part visibly matters) of hidden/feature width 16."""
    from nodes_support import pack_module

    c, cw = pack_module("rehyat.config"), pack_module("rehyat.integrations.comfyui_wan")
    phi = c.FeatureMapConfig(hidden_dim=16, feature_dim=16)
    config = c.ConversionConfig(attention=c.HybridAttentionConfig(
        chunk_frames=chunk_frames, overlap_frames=overlap_frames, feature_map=phi))
    wan = base.get_model_object("diffusion_model")
    hybrid = cw.build_hybrid_modules(wan, config, config.resolve_blocks(len(wan.blocks)))
    gen = torch.Generator().manual_seed(phi_seed)
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return cw.patch_comfy_wan(base, config, hybrid, forward_mode=forward_mode)


WAN_I2V_IN_DIM = 36  # 16 noise + 4 mask + 16 image-latent channels
CLIP_VISION_DIM = 1280  # CLIP-H penultimate width that Wan's img_emb expects


def tiny_wan_i2v_state_dict(dim: int = 128, ffn_dim: int = 256, num_layers: int = 2, seed: int = 0,
                            flf_tokens: int | None = None):
    """Random Wan2.1 I2V weights (ComfyUI's ``WanModel(model_type="i2v")`` key names and shapes).

    ``flf_tokens`` (e.g. 514 = 2 × 257 CLIP tokens) makes it a first-last-frame model (FLF2V-14B's
    ``img_emb.emb_pos``, which ComfyUI detects).

    Shared T2V keys come from :func:`comfy_support.tiny_wan_state_dict`; the I2V-only ones (image
    embedding, image cross-attention, 36-channel patch embedding) are drawn with fan-in scaling.
    """
    modules = import_comfyui()
    config = tiny_wan_config(dim=dim, ffn_dim=ffn_dim, num_layers=num_layers)
    config.update(model_type="i2v", in_dim=WAN_I2V_IN_DIM)
    if flf_tokens is not None:
        config.update(flf_pos_embed_token_number=flf_tokens)
    model = modules.wan_model.WanModel(**config, operations=modules.ops.disable_weight_init)
    base = tiny_wan_state_dict(dim=dim, ffn_dim=ffn_dim, num_layers=num_layers, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for name, tensor in model.state_dict().items():
        if name in base and base[name].shape == tensor.shape:
            sd[name] = base[name]
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if "norm" in name or name.endswith(("proj.0.weight", "proj.4.weight")):
            sd[name] = 1.0 + 0.1 * noise if name.endswith("weight") else 0.02 * noise
        elif tensor.ndim >= 2:
            sd[name] = noise / math.sqrt(tensor[0].numel())
        else:
            sd[name] = 0.02 * noise
    return sd


def stock_wan_nodes():
    """ComfyUI's ``comfy_extras.nodes_wan``; it imports ``nodes`` (ComfyUI's, not this repo's package)."""
    import importlib
    import sys

    from finetune_support import comfy_stock_nodes

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


def vision_output(seed: int, tokens: int = 257):
    """A CLIP-vision output with random CLIP-H penultimate features ``(1, tokens, 1280)``."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    gen = torch.Generator().manual_seed(seed)
    output.penultimate_hidden_states = torch.randn((1, tokens, CLIP_VISION_DIM), generator=gen)
    return output
