"""Test helpers of the chunked sampler tests: a tiny Wan2.1 image-to-video model with real key names."""

from __future__ import annotations

import math

import torch
from comfy_support import import_comfyui, tiny_wan_config, tiny_wan_state_dict

WAN_I2V_IN_DIM = 36  # 16 noise + 4 mask + 16 image-latent channels
CLIP_VISION_DIM = 1280  # CLIP-H penultimate width that Wan's img_emb expects


def tiny_wan_i2v_state_dict(dim: int = 128, ffn_dim: int = 256, num_layers: int = 2, seed: int = 0):
    """Random Wan2.1 I2V weights (ComfyUI's ``WanModel(model_type="i2v")`` key names and shapes).

    Shared T2V keys come from :func:`comfy_support.tiny_wan_state_dict`; the I2V-only ones (image
    embedding, image cross-attention, 36-channel patch embedding) are drawn with fan-in scaling.
    """
    modules = import_comfyui()
    config = tiny_wan_config(dim=dim, ffn_dim=ffn_dim, num_layers=num_layers)
    config.update(model_type="i2v", in_dim=WAN_I2V_IN_DIM)
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
