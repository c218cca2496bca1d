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
  by chunk through :func:`rehyat.recurrent_dit.run_chunked_forward` — with fresh states (sweep) or
  continuing the streaming state store at the chunk's absolute frame offset. Model inputs it cannot
  honour (VACE, reference latents with a ref_conv, time_dim_concat, ControlNet, unknown inputs) are
  refused by name, never dropped;
- a ``prepare_sampling`` wrapper makes ComfyUI size its memory for one chunk (Tc + To frames, plus
  the state store when it stays on the device) instead of the whole clip; φ is counted in the
  clone's model size, and lives in the model's module tree through the object patches.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import ConversionConfig
from ..hybrid import FrameGrid, HybridAttention, ReHyAtRun, check_hybrid_modules
from ..ops import RecurrentState
from ..recurrent_dit import check_recurrent_capable, run_chunked_forward
from ..streaming.driver import CONTEXT_KEY, StreamContext
from ..weights import (
    BaseModelInfo,
    apply_phi_tensors,
    check_compatible,
    fingerprint_module,
    load_phi_weights,
    save_phi_weights,
)

DIFFUSION_MODEL_WRAPPER = "diffusion_model"  # comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
PREPARE_SAMPLING_WRAPPER = "prepare_sampling"  # comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
CHUNKED_KEY = "rehyat_chunked"  # transformer_options entry set by the chunked sampler nodes (see below)
WRAPPER_KEY = "rehyat"
ATTACHMENT_KEY = "rehyat"
RUN_KEY = "rehyat_run"  # transformer_options entry read by the attention layers
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
        check_recurrent_capable(blocks, len(wan.blocks), config.attention.causal, config.attention.variant)
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
    clone.add_wrapper_with_key(PREPARE_SAMPLING_WRAPPER, WRAPPER_KEY, _prepare_sampling_wrapper)
    clone.attachments[ATTACHMENT_KEY] = patch
    return clone


def phi_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (φ of one block)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def build_hybrid_modules(
    wan: nn.Module, config: ConversionConfig, blocks: tuple[int, ...]
) -> dict[int, HybridAttention]:
    """Fresh (untrained) φ for ``blocks`` of a ComfyUI Wan model, fp32 on the model's device."""
    attn = wan.blocks[0].self_attn
    device = next(wan.parameters()).device
    return {
        i: HybridAttention(attn.num_heads, attn.head_dim, config.attention, i).to(device) for i in blocks
    }


def comfy_base_info(model_patcher: Any) -> BaseModelInfo:
    """Width, heads and depth of the Wan model inside ``model_patcher``."""
    wan = model_patcher.get_model_object("diffusion_model")
    return BaseModelInfo(dim=wan.dim, num_heads=wan.num_heads, num_layers=len(wan.blocks))


def comfy_fingerprint(model_patcher: Any) -> list[float]:
    """Fingerprint of the Wan model's **base** self-attention weights (see :mod:`rehyat.weights`).

    Weights patched in place (a LoRA while the model is loaded) are read from the patcher's backup,
    so the answer is the checkpoint's whether or not the patches are applied; fp8_scaled weights are
    multiplied by their ``scale_weight``.
    """
    wan = model_patcher.get_model_object("diffusion_model")
    originals = {key: entry.weight for key, entry in getattr(model_patcher, "backup", {}).items()}
    return fingerprint_module(model_patcher.model, "wan", prefix="diffusion_model.",
                              num_layers=len(wan.blocks), originals=originals)


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


def latent_grid(wan: nn.Module, latent: Tensor) -> FrameGrid:
    """Token grid of a latent ``(B, C, T, H, W)`` after Wan's patching (padded like ComfyUI)."""
    pt, ph, pw = wan.patch_size
    t, h, w = latent.shape[2:]
    return FrameGrid(math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))


# Model inputs the recurrent forward understands; anything else is refused by name, never dropped.
_RECURRENT_INPUTS = ("clip_fea", "control", "reference_latent")


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
        if stream is not None or patch.forward_mode == "recurrent":
            check_recurrent_inputs(wan, kwargs)
            return _recurrent_forward(wan, patch, x, timestep, context, clip_fea, options, stream)
        options[RUN_KEY] = ReHyAtRun(grid=latent_grid(wan, x))
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    return rehyat_diffusion_model_wrapper


def check_recurrent_inputs(wan: nn.Module, inputs: Mapping[str, Any]) -> None:
    """Refuse model inputs the recurrent forward cannot honour, naming them and what to do."""
    if hasattr(wan, "vace_blocks"):
        raise ValueError(
            "ReHyAt's chunked forward does not support VACE models (their control blocks attend over all "
            "frames): use a plain Wan2.1 T2V / I2V model"
        )
    unknown = sorted(k for k, v in inputs.items() if k not in _RECURRENT_INPUTS and v is not None)
    if unknown:
        raise ValueError(
            f"ReHyAt's chunked forward does not support the model input(s) {unknown} (set by another node "
            "or the conditioning); remove them, or run the patched model in parallel mode"
        )
    if inputs.get("control") is not None:
        raise ValueError(
            "ReHyAt's chunked forward does not support ControlNet-style control inputs on Wan: remove the "
            "control from the conditioning"
        )


def check_chunked_sampling(model_patcher: Any) -> ComfyReHyAtPatch:
    """The ReHyAt patch of a model the chunked samplers can run, or a ValueError saying what to change."""
    patch = comfy_patch_info(model_patcher)
    if patch is None:
        raise ValueError(
            "the ReHyAt chunked samplers need a ReHyAt-patched Wan2.1 model: connect the MODEL output of "
            "'ReHyAt Patch Wan' (every block converted, causal) instead of the plain model"
        )
    wan = model_patcher.get_model_object("diffusion_model")
    check_recurrent_capable(
        patch.blocks, len(wan.blocks), patch.config.attention.causal, patch.config.attention.variant
    )
    check_recurrent_inputs(wan, {})
    return patch


# Conditioning entries (ComfyUI's processed conds) and how a streaming chunk uses them.
_PER_FRAME_CONDS = ("c_concat",)  # (B, C, T, H, W): sliced to the chunk's frames
_SHARED_CONDS = ("c_crossattn", "clip_fea")  # the same for every chunk


@contextlib.contextmanager
def chunk_conditioning(guider: Any, frame_start: int, frame_end: int, frames: int) -> Iterator[None]:
    """While a streaming chunk runs, give ``guider`` (a CFGGuider during sampling) conditioning for
    frames ``[frame_start, frame_end)`` only: per-frame inputs such as the I2V concat latent are
    sliced; area / mask conditioning, ControlNets and unknown inputs are refused."""
    original = getattr(guider, "conds", None)
    if not isinstance(original, dict):
        yield
        return
    sliced = {}
    for name, conds in original.items():
        sliced[name] = [_chunk_cond(name, cond, frame_start, frame_end, frames) for cond in conds]
    guider.conds = sliced
    try:
        yield
    finally:
        guider.conds = original


def _chunk_cond(name: str, cond: dict, f0: int, f1: int, frames: int) -> dict:
    if cond.get("area") is not None or cond.get("mask") is not None:
        raise ValueError(
            f"{name} conditioning with an area or mask cannot stream chunk by chunk: remove the area / "
            "mask node, or use order='sweep'"
        )
    if cond.get("control") is not None:
        raise ValueError(f"{name} conditioning carries a ControlNet, which ReHyAt's chunked forward does not "
                         "support: remove it")
    model_conds = dict(cond.get("model_conds") or {})
    for key, value in model_conds.items():
        if key in _PER_FRAME_CONDS:
            tensor = value.cond  # (B, C, T, H, W)
            if tensor.ndim != 5 or tensor.shape[2] != frames:
                raise ValueError(f"{name} conditioning input {key!r} of shape {tuple(tensor.shape)} does not "
                                 f"have the latent's {frames} frames")
            model_conds[key] = value._copy_with(tensor[:, :, f0:f1])
        elif key not in _SHARED_CONDS:
            raise ValueError(
                f"{name} conditioning input {key!r} is not supported by the streaming order: remove the node "
                "that adds it, or use order='sweep'"
            )
    return {**cond, "model_conds": model_conds}


def chunk_noise_shape(noise_shape: Any, attention: Any) -> list[int]:
    """The latent shape whose activations one recurrent chunk holds: Tc + To frames (capped at T)."""
    shape = list(noise_shape)
    if len(shape) == 5:
        shape[2] = min(shape[2], attention.chunk_frames + attention.overlap_frames)
    return shape


def _prepare_sampling_wrapper(executor, model, noise_shape, *args, **kwargs):
    """Make ComfyUI size memory for one chunk (plus the state store kept on the device), not the clip.

    Active when the patched model runs recurrently (``forward_mode="recurrent"``) or a chunked
    sampler set ``transformer_options["rehyat_chunked"] = {"device_state_bytes": n}``; the state
    bytes are added as the equivalent number of latent frames of ComfyUI's own memory estimate.
    """
    model_options = kwargs.get("model_options") or {}
    chunked = (model_options.get("transformer_options") or {}).get(CHUNKED_KEY)
    patch = comfy_patch_info(model)
    if patch is None or (chunked is None and patch.forward_mode != "recurrent") or len(noise_shape) != 5:
        return executor(model, noise_shape, *args, **kwargs)
    shape = chunk_noise_shape(noise_shape, patch.config.attention)
    state_bytes = int((chunked or {}).get("device_state_bytes", 0))
    if state_bytes > 0 and hasattr(model.model, "memory_required"):
        one_frame = [shape[0] * 2, shape[1], 1, *shape[3:]]
        per_frame = max(float(model.model.memory_required(one_frame)), 1.0)
        shape[2] += math.ceil(state_bytes / per_frame)
    return executor(model, shape, *args, **kwargs)


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


class _ComfyWanChunks:
    """:class:`rehyat.recurrent_dit.ChunkedDiT` over a ComfyUI ``WanModel`` (mirrors ``forward_orig``).

    ``x`` holds latent frames ``[frame_offset, frame_offset + T)`` of the clip; the chunk methods take
    absolute frame indices (RoPE positions).
    """

    def __init__(self, wan: nn.Module, x: Tensor, timestep: Tensor, context: Tensor, clip_fea: Tensor | None,
                 options: dict, grid: FrameGrid, frame_offset: int = 0):
        if timestep.ndim != 1:
            raise ValueError("the recurrent forward needs one timestep per batch item (shape (B,))")
        self.wan, self.options, self.grid, self.frame_offset = wan, options, grid, frame_offset
        self.latent_hw = x.shape[3:]
        self.x = _pad_to_patch(x, wan.patch_size)  # (B, C, T, H, W) — the latent is small
        self.rope_scale_t = (options.get("rope_options") or {}).get("scale_t", 1.0)
        e = wan.time_embedding(_sinusoidal(wan.freq_dim, timestep.flatten()).to(dtype=x.dtype))
        self.e = e.reshape(timestep.shape[0], -1, e.shape[-1])  # (B, 1, C)
        self.e0 = wan.time_projection(self.e).unflatten(2, (6, wan.dim))  # (B, 1, 6, C)
        context = wan.text_embedding(context)
        self.context_img_len = None
        if clip_fea is not None:
            if wan.img_emb is not None:
                context = torch.concat([wan.img_emb(clip_fea), context], dim=1)
            self.context_img_len = clip_fea.shape[-2]
        self.context = context

    def embed(self, f0: int, f1: int) -> Tensor:
        x = self.x[:, :, f0 - self.frame_offset:f1 - self.frame_offset]
        x = self.wan.patch_embedding(x.float()).to(x.dtype)  # (B, C, n, H', W')
        return x.flatten(2).transpose(1, 2)  # (B, n·P, C)

    def run_block(self, index: int, tokens: Tensor, f0: int, f1: int, run: ReHyAtRun) -> Tensor:
        h, w = self.latent_hw
        freqs = self.wan.rope_encode(f1 - f0, h, w, t_start=f0 * self.rope_scale_t, device=tokens.device,
                                     dtype=tokens.dtype, transformer_options=self.options)
        options = {**self.options, RUN_KEY: run}
        return self.wan.blocks[index](tokens, e=self.e0, freqs=freqs, context=self.context,
                                      context_img_len=self.context_img_len, transformer_options=options)

    def finish_chunk(self, tokens: Tensor, f0: int, f1: int) -> Tensor:
        out = self.wan.head(tokens, self.e)
        return self.wan.unpatchify(out, (f1 - f0, self.grid.height, self.grid.width))  # (B, C, n, H, W)


def _recurrent_forward(wan, patch: ComfyReHyAtPatch, x: Tensor, timestep, context, clip_fea, options: dict,
                       stream: StreamContext | None) -> Tensor:
    """The DiT chunk by chunk: fresh states (recurrent mode, sweep) or continuing the store (streaming)."""
    if options.get("patches_replace", {}).get("dit") or options.get("patches", {}).get("double_block"):
        raise ValueError(
            "the recurrent ReHyAt forward cannot run together with other DiT block patches "
            "(patches_replace['dit'] / patches['double_block']): use forward_mode='parallel'"
        )
    if stream is not None and stream.latent_hw is not None and tuple(x.shape[3:]) != tuple(stream.latent_hw):
        raise ValueError(
            f"the chunked sampler got a model call on a {tuple(x.shape[3:])} latent area inside a "
            f"{tuple(stream.latent_hw)} latent (area conditioning?): remove area / mask conditioning"
        )
    grid = latent_grid(wan, x)
    chunk_frames = patch.config.attention.chunk_frames
    streaming = stream is not None and stream.order == "streaming"
    offset = stream.frame_offset if streaming else 0
    keys, states = [], None
    if streaming:
        if stream.store is None:
            raise ValueError("a streaming model call needs the state store of its sampler run")
        cond_or_uncond = list(options.get("cond_or_uncond") or [0])
        if x.shape[0] % len(cond_or_uncond):
            raise ValueError(
                f"model batch {x.shape[0]} is not a multiple of its {len(cond_or_uncond)} conditionings")
        keys = stream.keys_for_call(cond_or_uncond, x.shape[0] // len(cond_or_uncond))
        states = stream.store.load(keys, frame_offset=offset, device=x.device)
    on_chunk = stream.on_forward_chunk if stream is not None and not streaming else None
    chunks = _ComfyWanChunks(wan, x, timestep, context, clip_fea, options, grid, frame_offset=offset)
    states_out: dict[int, RecurrentState] | None = {} if streaming and stream.save_states else None
    outputs = run_chunked_forward(
        chunks, grid=grid, num_blocks=len(wan.blocks), chunk_frames=chunk_frames, frame_offset=offset,
        states=states, states_out=states_out, on_chunk=on_chunk,
    )
    if states_out is not None:
        stream.store.save(keys, states_out)
    t, h, w = x.shape[2:]
    return torch.cat(outputs, dim=2)[:, :, :t, :h, :w]


def _pad_to_patch(x: Tensor, patch_size: tuple[int, int, int]) -> Tensor:
    """Circular-pad ``(B, C, T, H, W)`` up to multiples of the patch size, as ComfyUI's Wan does."""
    pads = []
    for size, patch in zip(reversed(x.shape[2:]), reversed(patch_size), strict=True):
        pads += [0, (patch - size % patch) % patch]
    return torch.nn.functional.pad(x, pads, mode="circular") if any(pads) else x


def _sinusoidal(dim: int, position: Tensor) -> Tensor:
    """Wan's 1-D sinusoidal timestep embedding ``(n,) -> (n, dim)`` (cos then sin, fp32)."""
    half = dim // 2
    position = position.to(torch.float32)
    freqs = torch.pow(10000, -torch.arange(half, device=position.device).to(position).div(half))
    sinusoid = torch.outer(position, freqs)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)
