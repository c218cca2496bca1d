"""Building fine-tuning samples: the teacher's own generations, and ComfyUI conditionings → context tensors.

The paper's synthetic recipe: for a prompt list × seeds, the softmax teacher samples a clean latent
(Euler on Wan's flow, classifier-free guidance); each (latent, prompt embedding) pair becomes one
sample. Video clips encoded with the Wan VAE are the other source (the ComfyUI node does the
encoding; :meth:`LatentDataset.append` stores the result).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..config import require_int, require_real
from ..video_latent import WAN_LATENT_CHANNELS
from .flow_matching import ModelFn, euler_sample

WAN21_DATASET_MODEL = {
    "family": "wan2.1",
    "latent_space": "model (Wan21 latent format, process_in)",
    "in_dim": WAN_LATENT_CHANNELS,
}
"""The ``model`` entry of Wan2.1 T2V datasets (the CLI and the ComfyUI node write the same one)."""
_IMAGE_EXTRAS = ("clip_vision_output", "concat_latent_image", "concat_mask", "reference_latents")


def conditioning_tensor(conditioning: Any, what: str = "conditioning") -> Tensor:
    """The text embedding (L, D) of a ComfyUI-style conditioning ``[[cond (1, L, D), extras], ...]``.

    Only text-to-video conditionings are training samples here: one entry, batch 1, and no image
    inputs (I2V's CLIP-vision / concat latents would be silently dropped otherwise).
    """
    if isinstance(conditioning, Tensor):
        cond, extras = conditioning, {}
    else:
        if not isinstance(conditioning, (list, tuple)) or len(conditioning) != 1:
            count = (
                len(conditioning) if isinstance(conditioning, (list, tuple)) else type(conditioning).__name__
            )
            raise ValueError(
                f"{what} must hold exactly one entry (combine / area conditionings are not training "
                f"samples); "
                f"got {count}"
            )
        cond, extras = conditioning[0][0], conditioning[0][1]
    present = [k for k in _IMAGE_EXTRAS if extras.get(k) is not None]
    if present:
        raise ValueError(
            f"{what} carries image inputs {present}: only text-to-video fine-tuning is supported"
        )
    if cond.ndim == 3:
        if cond.shape[0] != 1:
            raise ValueError(f"{what} has batch {cond.shape[0]}: give one prompt per sample")
        cond = cond[0]
    if cond.ndim != 2:
        raise ValueError(f"{what} tensor must be (1, L, D); got {tuple(cond.shape)}")
    return cond


def noise_for_seed(seed: int, latent_shape: tuple[int, ...]) -> Tensor:
    """ComfyUI's initial noise for ``seed`` (as ``comfy.sample.prepare_noise``): CPU fp32, (1, C, T, H, W)."""
    require_int("seed", seed, low=0, high=2**64 - 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32)


@torch.no_grad()
def generate_teacher_latent(
    model_fn: ModelFn,
    context: Tensor,
    negative: Tensor | None,
    *,
    seed: int,
    latent_shape: tuple[int, int, int, int],
    steps: int,
    guidance: float,
    shift: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """The teacher's clean latent (C, T, H, W) for one prompt embedding (L, D) and one seed (Euler, CFG)."""
    require_real("guidance", guidance, low=0.0, high=100.0)
    noise = noise_for_seed(seed, latent_shape).to(device, dtype)
    positive = context.unsqueeze(0).to(device, dtype)  # (1, L, D)
    negative_batch = None if negative is None else negative.unsqueeze(0).to(device, dtype)
    latent = euler_sample(
        model_fn,
        noise,
        positive,
        steps=steps,
        shift=shift,
        negative_context=negative_batch,
        guidance=guidance,
        callback=callback,
    )
    return latent[0].float().cpu()
