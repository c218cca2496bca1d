"""Progressive decoding with the Wan2.1 VAE: chunk after chunk, equal to decoding the whole latent.

The Wan VAE decoder is causal in time: it decodes one latent frame at a time, carrying a feature
cache (the last frames each causal 3-D convolution needs) from frame to frame, after a pointwise
``conv2``. Keeping that cache between calls and feeding the latent chunk by chunk therefore gives
the same frames as one whole-latent decode, with the memory of one chunk.

Duck-typed on ComfyUI's ``comfy.ldm.wan.vae.WanVAE`` (``conv2``, ``decoder`` and the module's
``count_conv3d``): never imports ComfyUI.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor


class ProgressiveWanDecoder:
    """Decode a Wan2.1 latent chunk by chunk with the causal cache carried over.

    Args:
        wan_vae: the ``WanVAE`` module (``comfy.sd.VAE(...).first_stage_model``).

    Raises:
        TypeError: ``wan_vae`` is not a Wan2.1 VAE (other VAEs cannot be decoded progressively).
    """

    def __init__(self, wan_vae: Any):
        module = sys.modules.get(type(wan_vae).__module__)
        count = getattr(module, "count_conv3d", None)
        if count is None or not hasattr(wan_vae, "conv2") or not hasattr(wan_vae, "decoder"):
            raise TypeError(
                f"progressive decode needs the Wan2.1 VAE (comfy.ldm.wan.vae.WanVAE); got "
                f"{type(wan_vae).__module__}.{type(wan_vae).__qualname__} — connect the Wan2.1 VAE or no VAE"
            )
        self.vae = wan_vae
        self._cache: list[Any] = [None] * count(wan_vae.decoder)
        self.frames_decoded = 0

    @torch.inference_mode()
    def decode(self, z: Tensor) -> Tensor:
        """Decode latent frames ``z`` ``(B, C, n, H, W)`` that follow the frames decoded so far.

        Returns the pixels ``(B, 3, n', 8H, 8W)`` in ``[-1, 1]`` (n' = 1 + 4(n−1) for the first
        chunk, 4n afterwards), exactly the frames a whole-latent decode gives for these latents.
        """
        x = self.vae.conv2(z)  # pointwise: no temporal cache
        outputs = []
        for i in range(x.shape[2]):
            index = [0]
            outputs.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=index))
        self.frames_decoded += x.shape[2]
        return torch.cat(outputs, dim=2)
