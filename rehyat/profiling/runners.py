"""Runnable models for measurement: one forward (one model evaluation) of a case, and its blocks.

A :class:`Runner` is what :mod:`rehyat.profiling.measure` times: ``forward()`` runs one model
evaluation on the case's latent, ``blocks`` are the modules timed per block. Two sources:

- :func:`wandit_runner` — the pure-PyTorch :class:`~rehyat.models.wan.WanDiT` of a :class:`WanShape`
  (optionally reduced in depth), random weights, converted with :mod:`rehyat.models.wan_rehyat`;
- :func:`comfy_runner` — a ComfyUI ``ModelPatcher`` holding a Wan2.1 model (duck-typed, no ``comfy``
  import), patched with :func:`rehyat.integrations.comfyui_wan.patch_comfy_wan`.

Uniform-hybrid cases run :mod:`rehyat.ops.uniform_hybrid` (the fidelity baseline's kernel, untrained
φ); context windows run the inner case once per window (the blending of overlapping windows is
element-wise and not run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..baselines import BaselineAttentionConfig
from ..config import ConversionConfig, HybridAttentionConfig, check_recurrent_capable
from .cases import Case, ContextWindowCase, ReHyAtCase, UniformHybridCase
from .presets import LatentGrid, WanShape


@dataclass
class Runner:
    """One model evaluation of a case (``forward``) and the blocks to time."""

    forward: Callable[[], Any]
    blocks: Sequence[nn.Module]
    converted: tuple[int, ...]
    layers: int
    cleanup: Callable[[], None] = field(default=lambda: None)


ConvertedCase = ReHyAtCase | UniformHybridCase


def conversion_for(case: ConvertedCase, layers: int, full_layers: int) -> ConversionConfig:
    """The conversion of ``case`` on ``layers`` blocks (reduced depth keeps the converted share)."""
    converted = layers if case.converted_blocks is None else min(
        layers, round(case.converted_blocks * layers / full_layers))
    if isinstance(case, UniformHybridCase):
        attention = BaselineAttentionConfig(causal=False, feature_map=case.feature_map,
                                            variant="uniform_hybrid", rate=case.rate)
        return ConversionConfig(num_blocks=converted, placement="last", attention=attention)
    attention = HybridAttentionConfig(chunk_frames=case.chunk_frames, overlap_frames=case.overlap_frames,
                                      causal=case.causal, feature_map=case.feature_map)
    if case.form == "recurrent":  # placement "last": the first layers − converted blocks stay softmax
        check_recurrent_capable(range(layers - converted, layers), layers, attention,
                                what=f"form='recurrent' ({case.label})", instead="form='parallel'")
    return ConversionConfig(num_blocks=converted, placement="last", attention=attention)


def window_latents(case: Case, latent: LatentGrid) -> list[LatentGrid]:
    """The latents one evaluation runs on: the whole latent, or one per context window."""
    if isinstance(case, ContextWindowCase):
        return [latent.with_frames(end - start) for start, end in case.windows(latent.frames)]
    return [latent]


def wandit_runner(shape: WanShape, case: Case, latent: LatentGrid, *, layers: int | None = None,
                  device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> Runner:
    """A random-weight :class:`WanDiT` of ``shape`` (``layers`` blocks; default all) running ``case``."""
    from ..models.wan import WanDiT, WanDiTConfig
    from ..models.wan_rehyat import convert, converted_blocks, forward_recurrent

    layers = shape.num_layers if layers is None else layers
    if not 1 <= layers <= shape.num_layers:
        raise ValueError(f"layers must be in [1, {shape.num_layers}]; got {layers}")
    torch.manual_seed(seed)
    config = WanDiTConfig(dim=shape.dim, ffn_dim=shape.ffn_dim, num_heads=shape.num_heads, num_layers=layers,
                          in_dim=shape.in_dim, out_dim=shape.out_dim, text_dim=shape.text_dim,
                          freq_dim=shape.freq_dim, patch_size=shape.patch)
    with torch.device(device):
        model = WanDiT(config)
    inner = case.inner if isinstance(case, ContextWindowCase) else case
    recurrent = isinstance(inner, ReHyAtCase) and inner.form == "recurrent"
    converted: tuple[int, ...] = ()
    if isinstance(inner, (ReHyAtCase, UniformHybridCase)):
        conversion = conversion_for(inner, layers, shape.num_layers)
        convert(model, conversion)
        converted = conversion.resolve_blocks(layers)
    model = model.to(device=device, dtype=dtype).eval()
    model.patch_embedding.float()  # WanDiT runs its patch embedding in fp32 (as ComfyUI does)
    for hybrid in converted_blocks(model).values():
        hybrid.float()  # φ stays fp32 under bf16/fp16 activations, as patch_comfy_wan builds it
    gen = torch.Generator().manual_seed(seed)
    latents = [torch.randn(1, shape.in_dim, g.frames, g.height, g.width, generator=gen).to(device, dtype)
               for g in window_latents(case, latent)]
    context = torch.randn(1, shape.text_len, shape.text_dim, generator=gen).to(device, dtype)
    timestep = torch.full((1,), 500.0, device=device)

    @torch.inference_mode()
    def forward() -> None:
        for x in latents:
            out = forward_recurrent(model, x, timestep, context) if recurrent else model(x, timestep, context)
            del out

    return Runner(forward, list(model.blocks), converted, layers)


def comfy_runner(model_patcher: Any, case: Case, latent: LatentGrid, *, text_len: int = 512,
                 seed: int = 0) -> Runner:
    """``case`` on the Wan2.1 model in a ComfyUI ``ModelPatcher`` (patched clone for ReHyAt).

    The model is loaded to its load device for the runner's lifetime; call ``runner.cleanup()``.
    """
    from ..integrations.comfyui_wan import patch_comfy_wan

    wan = model_patcher.get_model_object("diffusion_model")
    layers = len(wan.blocks)
    inner = case.inner if isinstance(case, ContextWindowCase) else case
    patcher, converted = model_patcher, ()
    if isinstance(inner, (ReHyAtCase, UniformHybridCase)):
        conversion = conversion_for(inner, layers, layers)
        form = inner.form if isinstance(inner, ReHyAtCase) else "parallel"
        patcher = patch_comfy_wan(model_patcher, conversion, forward_mode=form)
        converted = conversion.resolve_blocks(layers)
    device = model_patcher.load_device
    dtype = getattr(patcher.model, "manual_cast_dtype", None) or patcher.model.get_dtype()
    gen = torch.Generator().manual_seed(seed)
    in_dim = wan.patch_embedding.in_channels
    latents = [torch.randn(1, in_dim, g.frames, g.height, g.width, generator=gen).to(device)
               for g in window_latents(case, latent)]
    context = torch.randn(1, text_len, wan.text_embedding[0].in_features, generator=gen).to(device, dtype)
    sigma = torch.tensor([0.5], device=device)
    patcher.patch_model(device_to=device)

    @torch.inference_mode()
    def forward() -> None:
        for x in latents:
            out = patcher.model.apply_model(x, sigma, c_crossattn=context,
                                            transformer_options={"wrappers": patcher.wrappers})
            del out

    def cleanup() -> None:
        patcher.unpatch_model(device_to=patcher.offload_device)

    blocks = list(patcher.get_model_object("diffusion_model").blocks)
    return Runner(forward, blocks, converted, layers, cleanup)
