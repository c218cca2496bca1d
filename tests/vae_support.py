"""A tiny Wan2.1 VAE for tests: ComfyUI's real ``WanVAE`` class and loader, random weights.

:func:`tiny_wan_vae_state_dict` builds a state dict with the real key names (width ``dim`` instead
of 96, so it is fast on CPU); :func:`load_tiny_wan_vae` loads it with ``comfy.sd.VAE`` the way
ComfyUI's VAELoader does. The two functions are a stable interface: other tests also save the state
dict as a ``.safetensors`` file into a ComfyUI server's ``models/vae`` folder.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from comfy_support import import_comfyui

WAN_VAE_Z_DIM = 16
WAN_VAE_TINY_DIM = 8  # the real Wan2.1 VAE has 96


def tiny_wan_vae_state_dict(seed: int = 0, dim: int = WAN_VAE_TINY_DIM) -> dict[str, torch.Tensor]:
    """Random weights for ComfyUI's Wan2.1 ``WanVAE`` of width ``dim`` (real key names, fp32).

    Scales are fan-in normalised (norm gains near 1) so decoded frames are finite and non-trivial.
    """
    import_comfyui()
    from comfy.ldm.wan.vae import WanVAE

    model = WanVAE(dim=dim, z_dim=WAN_VAE_Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True], dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if name.endswith("gamma"):
            sd[name] = 1.0 + 0.1 * noise
        elif tensor.ndim >= 2:
            sd[name] = noise / math.sqrt(max(1, tensor[0].numel()))
        else:
            sd[name] = 0.02 * noise
    return sd


def load_tiny_wan_vae(sd: dict[str, torch.Tensor] | None = None) -> Any:
    """``comfy.sd.VAE`` loaded from ``sd`` (default: :func:`tiny_wan_vae_state_dict` ``(seed=0)``)."""
    modules = import_comfyui()
    vae = modules.sd.VAE(sd=dict(sd if sd is not None else tiny_wan_vae_state_dict(0)))
    vae.throw_exception_if_invalid()
    return vae
