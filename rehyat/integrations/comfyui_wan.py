"""ReHyAt for ComfyUI's Wan2.1 (``comfy.ldm.wan.model.WanModel`` inside a ``ModelPatcher``).

Duck-typed on ComfyUI's objects — this module never imports ``comfy`` — so the core stays pure
PyTorch. :func:`patch_comfy_wan` returns a patched *clone*; the incoming patcher and its model are
never touched:

- each chosen block's ``self_attn`` is swapped by an object patch (active only while the clone is
  in use) for :class:`ComfyWanReHyAtSelfAttention`, which reuses the original q/k/v/o/norm modules
  (same parameter objects, same attribute names, so LoRA keys still resolve) and the model module's
  own RoPE function; cross-attention is never touched;
- a ``diffusion_model`` wrapper (keyed ``"rehyat"``) reads the frame grid off the actual latent
  (ComfyUI 0.3.75 passes none) and, in ``forward_mode="recurrent"`` or under a chunked sampler
  (a :class:`rehyat.streaming.StreamContext` in ``transformer_options``), runs the whole DiT chunk
  by chunk (:mod:`.comfyui_chunks`) — with fresh states (sweep) or continuing the streaming state
  store at the chunk's absolute frame offset. Model inputs it cannot honour (VACE, reference
  latents with a ref_conv, time_dim_concat, ControlNet, unknown inputs) are refused by name, never
  dropped;
- a ``prepare_sampling`` wrapper (:mod:`.comfyui_memory`) makes ComfyUI size its memory for one
  chunk (Tc + To frames, plus the state store when it stays on the device) instead of the whole
  clip; φ is counted in the clone's model size, and lives in the model's module tree through the
  object patches.

A streaming chunk's conditioning is sliced by :mod:`.comfyui_conditioning`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from ..config import ConversionConfig, check_recurrent_capable
from ..hybrid import HybridAttention, ReHyAtRun, build_attention, check_hybrid_modules
from ..streaming.driver import CONTEXT_KEY
from ..streaming.prompt_schedule import SCHEDULES_OPTION
from ..weights import (
    BaseModelInfo,
    apply_phi_tensors,
    check_compatible,
    fingerprint_module,
    load_phi_weights,
    save_phi_weights,
)
from .comfyui_chunks import RUN_KEY, check_recurrent_inputs, latent_grid, recurrent_forward
from .comfyui_memory import PREPARE_SAMPLING_WRAPPER, phi_bytes, prepare_sampling_wrapper
from .comfyui_weights import layer_cast_weight

DIFFUSION_MODEL_WRAPPER = "diffusion_model"  # comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
WRAPPER_KEY = "rehyat"
ATTACHMENT_KEY = "rehyat"
ForwardMode = Literal["parallel", "recurrent"]
FORWARD_MODES: tuple[str, ...] = ("parallel", "recurrent")
_SELF_ATTN = "diffusion_model.blocks.{}.self_attn"
_ROLES = ("q", "k", "v", "o", "norm_q", "norm_k")


@dataclass(frozen=True)
class ComfyReHyAtPatch:
    """What :func:`patch_comfy_wan` attached to the clone (``clone.attachments["rehyat"]``)."""

    config: ConversionConfig
    blocks: tuple[int, ...]
    hybrid: Mapping[int, HybridAttention]
    forward_mode: ForwardMode
    prompt_schedules: dict = field(default_factory=dict, compare=False, repr=False)
    """``{cond uuid: PromptSchedule}`` of the sampling run being prepared (set by the prepare-sampling
    wrapper from the conditioning; read by the model wrapper through ``transformer_options["uuids"]``)."""


class ComfyWanReHyAtSelfAttention(nn.Module):
    """Drop-in for ComfyUI's ``WanSelfAttention.forward(x, freqs, transformer_options)``.

    Computes q, k, v with the original block's modules and RoPE, then ReHyAt attention on the
    frame grid found in ``transformer_options["rehyat_run"]``.
    """

    def __init__(self, original: nn.Module, hybrid: HybridAttention):
        super().__init__()
        for role in _ROLES:  # shared modules: identical parameters, LoRA keys keep resolving
            setattr(self, role, getattr(original, role))
        self.num_heads: int = original.num_heads
        self.head_dim: int = original.head_dim
        self.hybrid = hybrid
        self._apply_rope = _model_rope_function(original)

    def forward(self, x: Tensor, freqs: Tensor, transformer_options: dict | None = None) -> Tensor:
        """``x`` ``(B, L, C)`` → ``(B, L, C)``, like the module it replaces."""
        options = transformer_options or {}
        run = _run_from_options(options, self.hybrid.block_index)
        _refuse_self_attention_patches(options, self.hybrid.block_index)
        b, s, n, d = x.shape[0], x.shape[1], self.num_heads, self.head_dim
        q = self._apply_rope(self.norm_q(self.q(x)).view(b, s, n, d), freqs)  # (B, L, H, d)
        k = self._apply_rope(self.norm_k(self.k(x)).view(b, s, n, d), freqs)
        v = self.v(x).view(b, s, n, d)
        out = self.hybrid(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), run)  # (B, H, L, d)
        return self.o(out.transpose(1, 2).reshape(b, s, n * d))


_SELF_ATTENTION_PATCHES = ("attn1_patch", "attn1_output_patch")


def _refuse_self_attention_patches(options: dict, block_index: int) -> None:
    """Other nodes' self-attention patches cannot act on a ReHyAt block: refuse, naming them."""
    patches = options.get("patches") or {}
    for name in _SELF_ATTENTION_PATCHES:
        if patches.get(name):
            raise ValueError(
                f"block {block_index}: another node installed an {name} on this model; ReHyAt replaces "
                "self-attention and cannot apply it — remove that node or leave this block unconverted"
            )
    if options.get("optimized_attention_override") is not None:
        raise ValueError(
            f"block {block_index}: another node set optimized_attention_override on this model; ReHyAt "
            "self-attention does not call ComfyUI's attention function, so the override would not apply "
            "— remove that node or leave this block unconverted"
        )


def patch_comfy_wan(
    model_patcher: Any,
    config: ConversionConfig | None = None,
    hybrid: Mapping[int, HybridAttention] | None = None,
    *,
    forward_mode: ForwardMode = "parallel",
) -> Any:
    """Return a clone of ``model_patcher`` whose chosen Wan blocks use ReHyAt self-attention.

    Args:
        model_patcher: a ComfyUI ``ModelPatcher`` holding a Wan2.1 ``WanModel`` (never modified).
        config: which blocks and how; defaults to :class:`ConversionConfig` defaults.
        hybrid: trained φ per block (e.g. from a φ weight file); fresh φ when None.
        forward_mode: "parallel" (all frames at once; works with softmax blocks present) or
            "recurrent" (chunk by chunk, constant memory; needs every block converted and causal).
    """
    if forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {FORWARD_MODES}; got {forward_mode!r}")
    config = config or ConversionConfig()
    wan = model_patcher.get_model_object("diffusion_model")
    if not hasattr(wan, "blocks") or not hasattr(wan, "rope_encode"):
        raise TypeError(f"patch_comfy_wan needs a ComfyUI Wan model; got {type(wan).__name__}")
    existing = getattr(model_patcher, "attachments", {}).get(ATTACHMENT_KEY)
    if existing is not None:
        raise ValueError("this model is already ReHyAt-patched: patch the original model instead")
    blocks = config.resolve_blocks(len(wan.blocks))
    if forward_mode == "recurrent":
        check_recurrent_capable(blocks, len(wan.blocks), config.attention)
    hybrid = dict(hybrid) if hybrid is not None else build_hybrid_modules(wan, config, blocks)
    check_hybrid_modules(hybrid, blocks, config.attention)

    clone = model_patcher.clone()
    # φ joins the model's module tree through the object patches; count it in the size ComfyUI's
    # memory management loads and frees (ModelPatcher.model_size caches the plain model's size).
    if hasattr(model_patcher, "model_size"):
        clone.size = model_patcher.model_size() + sum(phi_bytes(m) for m in hybrid.values())
    for index in blocks:
        original = model_patcher.get_model_object(_SELF_ATTN.format(index))
        clone.add_object_patch(_SELF_ATTN.format(index), ComfyWanReHyAtSelfAttention(original, hybrid[index]))
    patch = ComfyReHyAtPatch(config, blocks, hybrid, forward_mode)
    clone.add_wrapper_with_key(DIFFUSION_MODEL_WRAPPER, WRAPPER_KEY, _make_wrapper(patch))
    sizing = prepare_sampling_wrapper(comfy_patch_info)
    clone.add_wrapper_with_key(PREPARE_SAMPLING_WRAPPER, WRAPPER_KEY, sizing)
    clone.attachments[ATTACHMENT_KEY] = patch
    return clone


def unpatched_clone(model_patcher: Any) -> Any:
    """A clone of a model patched by :func:`patch_comfy_wan` without the ReHyAt patch (its object
    patches, wrapper and attachment); the patched model itself is untouched."""
    patch = comfy_patch_info(model_patcher)
    if patch is None:
        raise ValueError("this model is not ReHyAt-patched: there is no ReHyAt patch to remove")
    clone = model_patcher.clone()
    for index in patch.blocks:  # ModelPatcher has no public way to drop an object patch
        clone.object_patches.pop(_SELF_ATTN.format(index), None)
    clone.remove_wrappers_with_key(DIFFUSION_MODEL_WRAPPER, WRAPPER_KEY)
    clone.remove_wrappers_with_key(PREPARE_SAMPLING_WRAPPER, WRAPPER_KEY)
    clone.attachments.pop(ATTACHMENT_KEY, None)
    return clone


def build_hybrid_modules(
    wan: nn.Module, config: ConversionConfig, blocks: tuple[int, ...]
) -> dict[int, HybridAttention]:
    """Fresh (untrained) φ for ``blocks`` of a ComfyUI Wan model, fp32 on the model's device."""
    attn = wan.blocks[0].self_attn
    device = next(wan.parameters()).device
    return {
        i: build_attention(attn.num_heads, attn.head_dim, config.attention, i).to(device) for i in blocks
    }


def comfy_base_info(model_patcher: Any) -> BaseModelInfo:
    """Width, heads and depth of the Wan model inside ``model_patcher``."""
    wan = model_patcher.get_model_object("diffusion_model")
    return BaseModelInfo(dim=wan.dim, num_heads=wan.num_heads, num_layers=len(wan.blocks))


def comfy_fingerprint(model_patcher: Any) -> list[float]:
    """Fingerprint of the Wan model's **base** self-attention weights (see :mod:`rehyat.weights`).

    Weights patched in place (a LoRA while the model is loaded) are read from the patcher's backup,
    so the answer is the checkpoint's whether or not the patches are applied; fp8_scaled weights are
    multiplied by their ``scale_weight``; weights other packs keep quantized in their own layers
    (GGUF) are read through the layer's cast path (:func:`.comfyui_weights.layer_cast_weight`).
    """
    wan = model_patcher.get_model_object("diffusion_model")
    originals = {key: entry.weight for key, entry in getattr(model_patcher, "backup", {}).items()}
    return fingerprint_module(model_patcher.model, "wan", prefix="diffusion_model.",
                              num_layers=len(wan.blocks), originals=originals,
                              weight_reader=layer_cast_weight)


def load_phi_for_comfy(
    model_patcher: Any, path: str | os.PathLike[str],
) -> tuple[ConversionConfig, dict[int, HybridAttention]]:
    """Read a φ file, check it fits this model (shape and fingerprint) and build its φ modules."""
    phi = load_phi_weights(path)
    check_compatible(phi, comfy_base_info(model_patcher), comfy_fingerprint(model_patcher))
    wan = model_patcher.get_model_object("diffusion_model")
    hybrid = build_hybrid_modules(wan, phi.config, phi.blocks)
    apply_phi_tensors(hybrid, phi.tensors)
    return phi.config, hybrid


def save_phi_from_comfy(patched_clone: Any, path: str | os.PathLike[str]) -> Path:
    """Write the φ of a clone returned by :func:`patch_comfy_wan` to a φ file (atomically)."""
    patch = comfy_patch_info(patched_clone)
    if patch is None:
        raise ValueError("this model is not ReHyAt-patched: nothing to save")
    return save_phi_weights(path, patch.hybrid, patch.config, comfy_base_info(patched_clone),
                            comfy_fingerprint(patched_clone))


def comfy_patch_info(model_patcher: Any) -> ComfyReHyAtPatch | None:
    """The ReHyAt patch of a patched clone (None for an unpatched model)."""
    return getattr(model_patcher, "attachments", {}).get(ATTACHMENT_KEY)


def _make_wrapper(patch: ComfyReHyAtPatch):
    def rehyat_diffusion_model_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                                       transformer_options=None, **kwargs):
        wan = executor.class_obj
        if time_dim_concat is not None:
            raise ValueError(
                "ReHyAt does not support time_dim_concat inputs (frames appended along time by another "
                "node): they change the frame grid the chunks are cut on — remove that node"
            )
        options = dict(transformer_options or {})
        if kwargs.get("reference_latent") is not None and getattr(wan, "ref_conv", None) is not None:
            raise ValueError(
                "ReHyAt does not support reference latents (prepended reference tokens break the frame-major "
                "token layout) — remove the reference latent from the conditioning"
            )
        stream = options.get(CONTEXT_KEY)
        chunked = stream is not None or patch.forward_mode == "recurrent"
        schedules = [patch.prompt_schedules.get(uuid) for uuid in options.get("uuids") or ()]
        if any(s is not None for s in schedules):
            if not chunked:
                raise ValueError(
                    "a ReHyAt Prompt Schedule needs chunked sampling (the prompt changes between chunks): "
                    "use the ReHyAt Chunked Sampler / Extend Clip / Streaming Sampler, or "
                    "forward_mode=recurrent"
                )
            options[SCHEDULES_OPTION] = schedules
        if chunked:
            check_recurrent_inputs(wan, kwargs)
            chunk_frames = patch.config.attention.chunk_frames
            return recurrent_forward(wan, chunk_frames, x, timestep, context, clip_fea, options, stream)
        options[RUN_KEY] = ReHyAtRun(grid=latent_grid(wan, x))
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    return rehyat_diffusion_model_wrapper


def check_chunked_sampling(model_patcher: Any) -> ComfyReHyAtPatch:
    """The ReHyAt patch of a model the chunked samplers can run, or a ValueError saying what to change."""
    patch = comfy_patch_info(model_patcher)
    if patch is None:
        raise ValueError(
            "the ReHyAt chunked samplers need a ReHyAt-patched Wan2.1 model: connect the MODEL output of "
            "'ReHyAt Patch Model' (every block converted, causal) instead of the plain model"
        )
    wan = model_patcher.get_model_object("diffusion_model")
    check_recurrent_capable(patch.blocks, len(wan.blocks), patch.config.attention)
    check_recurrent_inputs(wan, {})
    return patch


def _run_from_options(options: dict, block_index: int) -> ReHyAtRun:
    run = options.get(RUN_KEY)
    if run is None:
        raise RuntimeError(
            f"ReHyAt block {block_index} was called without its frame grid: run the model through "
            "the patched ModelPatcher returned by patch_comfy_wan (its wrapper supplies the grid)"
        )
    return run


def _model_rope_function(original: nn.Module):
    """The RoPE function the Wan model module itself uses (``apply_rope1`` in ComfyUI ≥ 0.3.75)."""
    module = sys.modules.get(type(original).__module__)
    fn = getattr(module, "apply_rope1", None)
    if fn is None:
        raise TypeError(
            f"cannot find apply_rope1 next to {type(original).__qualname__}: unsupported ComfyUI version"
        )
    return fn
