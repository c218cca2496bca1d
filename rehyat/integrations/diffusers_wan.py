"""ReHyAt for diffusers' Wan transformer (``diffusers.WanTransformer3DModel``, Wan2.1 / Wan2.2).

Duck-typed on diffusers' objects — this module never imports diffusers at import time — so the
core stays pure PyTorch. :func:`patch_diffusers_wan` patches the model **in place** and returns a
:class:`DiffusersReHyAtPatch` whose :meth:`~DiffusersReHyAtPatch.unpatch` undoes everything:

- each chosen block's self-attention ``blocks[i].attn1`` gets a :class:`ReHyAtWanAttnProcessor`
  (via ``attn1.set_processor``); cross-attention ``attn2`` and unchosen blocks keep their own
  processor objects. The processor is an ``nn.Module`` holding the block's φ
  (:class:`~rehyat.hybrid.HybridAttention`), and diffusers registers a module processor as the
  submodule ``attn1.processor`` — as it does for IP-Adapter processors — so φ is part of the model's
  module tree: ``model.to()``, DDP, offloading, ``parameters()`` and ``state_dict()``
  (``blocks.N.attn1.processor.hybrid.feature_maps.phi_{q,k}.*``) all see it.
- the frame grid travels **with the call**: a forward hook on ``model.rope`` reads
  ``FrameGrid(T // p_t, H // p_h, W // p_w)`` off the latent the model gives its RoPE and returns
  the RoPE tables as a :class:`RotaryWithRun` — a tuple carrying the :class:`~rehyat.hybrid.ReHyAtRun`
  — which diffusers hands to every block as ``rotary_emb``. Gradient checkpointing replays a
  block with the same arguments, so recomputation sees the same grid (no side context that could
  be cleared or overwritten in between). Sizes that are not a multiple of the patch size are
  **floored**, exactly as diffusers' own patch embedding (a strided Conv3d that drops the
  remainder), RoPE and unpatchify do; the output then also has the floored size. A processor
  called without such tables (outside a model call) fails loudly.
- ``forward_mode="recurrent"`` takes the forward over: an instance attribute ``model.forward`` is
  installed (so ``model(...)``, pipelines and the pre-hook keep working) that runs the DiT chunk by
  chunk through :func:`rehyat.recurrent_dit.run_chunked_forward` with the same arguments and output
  format as diffusers' forward; ``unpatch`` deletes the attribute again, which makes the class's
  forward visible as before. Patch *before* installing other forward wrappers (accelerate offload
  hooks, diffusers hook registries): a model whose ``forward`` is already overridden is refused in
  recurrent mode, since the recurrent forward would silently bypass that wrapper.

The last recurrent forward's states are kept on the patch (:attr:`DiffusersReHyAtPatch.last_states`);
run one recurrent forward of a patched model at a time.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import ConversionConfig
from ..hybrid import FrameGrid, HybridAttention, ReHyAtRun
from ..ops import RecurrentState
from ..recurrent_dit import check_recurrent_capable, run_chunked_forward

ForwardMode = Literal["parallel", "recurrent"]
FORWARD_MODES: tuple[str, ...] = ("parallel", "recurrent")
_MARKER = "_rehyat_patch_context"  # attribute on a patched model (holds its _PatchContext)
_MISSING = object()


class RotaryWithRun(tuple):
    """diffusers' RoPE tables ``(freqs_cos, freqs_sin)`` plus the forward's :class:`ReHyAtRun` (``.run``).

    A plain tuple to diffusers (it unpacks and passes it on unchanged); the ReHyAt processors read
    the frame grid and run mode from ``.run``.
    """

    run: ReHyAtRun

    def __new__(cls, tables: tuple[Tensor, Tensor], run: ReHyAtRun) -> RotaryWithRun:
        obj = super().__new__(cls, tables)
        obj.run = run
        return obj


class _PatchContext:
    """What a patch's hooks and recurrent forward share (never holds the model).

    Attributes:
        last_states: per block, the recurrent states after the last recurrent forward.
    """

    def __init__(self, patch_size: tuple[int, int, int]) -> None:
        self.patch_size = patch_size
        self.last_states: dict[int, RecurrentState] = {}

    def rope_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook on ``model.rope``: attach this call's run (grid of the latent) to the tables."""
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        if isinstance(output, RotaryWithRun) or not isinstance(hidden_states, Tensor):
            return output
        grid = _grid_of(hidden_states, self.patch_size)
        return RotaryWithRun(tuple(output), ReHyAtRun(grid=grid, mode="parallel"))


class ReHyAtWanAttnProcessor(nn.Module):
    """Attention processor for a diffusers Wan **self**-attention (``WanTransformerBlock.attn1``).

    Computes q, k, v exactly like diffusers' ``WanAttnProcessor`` (projections — fused or not —,
    RMSNorm across heads, head split, interleaved-pair RoPE from ``rotary_emb``), replaces the
    softmax by :class:`~rehyat.hybrid.HybridAttention` on the frame grid carried by ``rotary_emb``
    (a :class:`RotaryWithRun`), then applies the output projection.

    An ``nn.Module``: set on ``attn1`` it becomes the submodule ``attn1.processor`` and its φ
    (``hybrid``) belongs to the model's module tree.

    Args:
        hybrid: the block's ReHyAt attention (φq, φk, Tc, To, causal).
    """

    # Attributes diffusers sets on processors (attention backend, context parallelism); ignored.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, hybrid: HybridAttention):
        super().__init__()
        self.hybrid = hybrid

    def forward(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``hidden_states`` ``(B, N, C)`` → ``(B, N, C)``, same signature as diffusers' processor."""
        index = self.hybrid.block_index
        if encoder_hidden_states is not None:
            raise ValueError(f"ReHyAt processor of block {index} is for self-attention (attn1) only")
        if attention_mask is not None:
            raise ValueError(f"ReHyAt processor of block {index} does not support an attention_mask")
        run = getattr(rotary_emb, "run", None)
        if run is None:
            raise RuntimeError(
                f"ReHyAt block {index} was called without a frame grid: call the patched transformer "
                "itself, model(hidden_states, ...), whose RoPE hook attaches the grid to rotary_emb "
                "(calling a block directly with plain RoPE tables bypasses it)"
            )
        query, key, value = _qkv_projections(attn, hidden_states)  # (B, N, H·d) each
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # (B, N, H, d)
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_wan_rotary(query, *rotary_emb)
            key = apply_wan_rotary(key, *rotary_emb)
        out = self.hybrid(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), run)  # (B,H,N,d)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)  # (B, N, H·d)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)  # dropout

    def extra_repr(self) -> str:
        return f"block={self.hybrid.block_index}"


def apply_wan_rotary(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` by diffusers' Wan RoPE tables.

    Args:
        x: ``(B, N, H, d)``.
        freqs_cos, freqs_sin: ``(1, N, 1, d)`` as returned by ``WanRotaryPosEmbed`` (each angle's
            cos / sin repeated twice, so the even / odd columns hold one value per pair).

    Returns:
        ``(B, N, H, d)`` in ``x``'s dtype: pair i becomes ``(x1 cos − x2 sin, x1 sin + x2 cos)``.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, H, d/2) each
    cos = freqs_cos[..., 0::2]  # (1, N, 1, d/2)
    sin = freqs_sin[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, N, H, d/2, 2)
    return rotated.flatten(-2).to(x.dtype)


def wan_frame_grid(model: nn.Module, hidden_states: Tensor) -> FrameGrid:
    """Token grid of a latent ``(B, C, T, H, W)`` after the model's patching (floored, as diffusers)."""
    return _grid_of(hidden_states, tuple(model.config.patch_size))


def _grid_of(hidden_states: Tensor, patch_size: tuple[int, int, int]) -> FrameGrid:
    if hidden_states.ndim != 5:
        raise ValueError(
            f"a Wan transformer takes hidden_states (B, C, T, H, W); got shape {tuple(hidden_states.shape)}"
        )
    p_t, p_h, p_w = patch_size
    t, h, w = hidden_states.shape[2:]
    if t < p_t or h < p_h or w < p_w:
        raise ValueError(f"latent {t}×{h}×{w} is smaller than the patch size {p_t}×{p_h}×{p_w}")
    return FrameGrid(t // p_t, h // p_h, w // p_w)


def wan_rotary_for_frames(
    rope: nn.Module, frame_start: int, frame_end: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """RoPE tables of post-patch frames ``[frame_start, frame_end)`` of an ``height × width`` grid.

    Equals rows ``[frame_start·P, frame_end·P)`` (``P = height·width``) of ``rope(latent)`` for the
    full latent, without building the full-grid tables (memory independent of the clip length).

    Args:
        rope: the model's ``WanRotaryPosEmbed`` (buffers ``freqs_cos`` / ``freqs_sin`` of shape
            ``(max_seq_len, d)``, column split ``t_dim | h_dim | w_dim``).

    Returns:
        ``(freqs_cos, freqs_sin)``, each ``(1, n·P, 1, d)`` with ``n = frame_end − frame_start``.
    """
    max_len = rope.freqs_cos.shape[0]
    if frame_end > max_len or height > max_len or width > max_len:
        raise ValueError(
            f"RoPE positions up to frame {frame_end - 1}, {height}×{width} exceed the model's "
            f"rope_max_seq_len={max_len}"
        )
    n = frame_end - frame_start
    splits = [rope.t_dim, rope.h_dim, rope.w_dim]

    def grid_table(freqs: Tensor) -> Tensor:
        f_t, f_h, f_w = freqs.split(splits, dim=1)  # (max_len, t_dim | h_dim | w_dim)
        parts = (
            f_t[frame_start:frame_end].view(n, 1, 1, -1).expand(n, height, width, -1),
            f_h[:height].view(1, height, 1, -1).expand(n, height, width, -1),
            f_w[:width].view(1, 1, width, -1).expand(n, height, width, -1),
        )
        return torch.cat(parts, dim=-1).reshape(1, n * height * width, 1, -1)  # frame-major tokens

    return grid_table(rope.freqs_cos), grid_table(rope.freqs_sin)


class DiffusersReHyAtPatch:
    """A ReHyAt patch applied in place to a diffusers Wan transformer (see :func:`patch_diffusers_wan`).

    Attributes:
        model: the patched transformer.
        config: the conversion config used.
        blocks: indices of the converted self-attention blocks.
        hybrid: block index → its :class:`HybridAttention` (φq/φk; train or load them here).
        forward_mode: "parallel" or "recurrent".

    Use as a context manager to unpatch on exit: ``with patch_diffusers_wan(model, cfg): ...``.
    """

    def __init__(
        self, model: nn.Module, config: ConversionConfig, hybrid: dict[int, HybridAttention],
        forward_mode: ForwardMode, context: _PatchContext, originals: dict[int, Any],
        handles: list[Any], forward_fn: Any, previous_forward: Any,
    ):
        self.model = model
        self.config = config
        self.blocks: tuple[int, ...] = tuple(sorted(hybrid))
        self.hybrid = hybrid
        self.forward_mode = forward_mode
        self._context = context
        self._originals = originals
        self._handles = handles
        self._forward_fn = forward_fn
        self._previous_forward = previous_forward
        self._active = True

    @property
    def active(self) -> bool:
        """Whether the patch is still applied (False after :meth:`unpatch`)."""
        return self._active

    @property
    def last_states(self) -> dict[int, RecurrentState]:
        """Block index → recurrent state after the last recurrent forward (empty before one).

        Under classifier-free guidance a pipeline calls the model twice per step; this is the
        state of the most recent call.
        """
        return self._context.last_states

    def parameters(self) -> Iterator[nn.Parameter]:
        """All φ parameters of the converted blocks, in block order (e.g. for an optimizer)."""
        for index in self.blocks:
            yield from self.hybrid[index].parameters()

    def unpatch(self) -> None:
        """Restore the original processors and forward, remove the hooks. Idempotent.

        Afterwards the model behaves exactly as before patching (same processor objects).

        Raises:
            RuntimeError: in recurrent mode, if ``model.forward`` was replaced after patching (e.g.
                an offload hook was added); remove that wrapper first. Nothing is changed then.
        """
        if not self._active:
            return
        model = self.model
        if self._forward_fn is not None and model.__dict__.get("forward") is not self._forward_fn:
            raise RuntimeError(
                "cannot unpatch: model.forward was replaced after the ReHyAt patch was applied (e.g. by "
                "an offloading or caching hook); remove that wrapper first, then unpatch"
            )
        if self._forward_fn is not None:
            if self._previous_forward is _MISSING:
                del model.forward
            else:
                model.forward = self._previous_forward
        for index, processor in self._originals.items():
            model.blocks[index].attn1.set_processor(processor)
        for handle in self._handles:
            handle.remove()
        if getattr(model, _MARKER, None) is self._context:
            delattr(model, _MARKER)
        self._active = False

    def __enter__(self) -> DiffusersReHyAtPatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"DiffusersReHyAtPatch(blocks={list(self.blocks)}, mode={self.forward_mode!r}, {state})"


def patch_diffusers_wan(
    model: nn.Module,
    config: ConversionConfig,
    feature_maps: Mapping[int, HybridAttention] | None = None,
    forward_mode: ForwardMode = "parallel",
) -> DiffusersReHyAtPatch:
    """Give the chosen blocks of a diffusers ``WanTransformer3DModel`` ReHyAt self-attention, in place.

    Args:
        model: the transformer (Wan2.1 T2V/I2V/FLF2V or Wan2.2; fp32/bf16/fp16; any device).
        config: which blocks (``config.resolve_blocks(len(model.blocks))``) and Tc/To/causal/φ.
        feature_maps: block index → trained :class:`HybridAttention` for exactly the chosen blocks
            (their Tc/To/causal and heads/head_dim must match); fresh φ (fp32, on the model's
            device) when None.
        forward_mode: "parallel" — all frames at once, any block selection; "recurrent" — the
            whole DiT chunk by chunk (constant activation memory in the clip length), needs every
            block converted and ``causal=True``; the model's forward is taken over (module doc).

    Returns:
        The patch; call ``.unpatch()`` (or use it as a context manager) to restore the model.

    Raises:
        ValueError: bad mode / block selection / feature maps, or recurrent mode not possible.
        RuntimeError: the model is already patched.
        TypeError: not a diffusers Wan transformer.
    """
    if forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {FORWARD_MODES}; got {forward_mode!r}")
    if not isinstance(config, ConversionConfig):
        raise TypeError(f"config must be a ConversionConfig; got {type(config).__name__}")
    _check_wan_model(model)
    if getattr(model, _MARKER, None) is not None:
        raise RuntimeError(
            "this model is already ReHyAt-patched: call .unpatch() on the existing patch before "
            "patching it again"
        )
    num_blocks = len(model.blocks)
    blocks = config.resolve_blocks(num_blocks)
    if forward_mode == "recurrent":
        check_recurrent_capable(blocks, num_blocks, config.attention.causal, config.attention.variant)
        if "forward" in model.__dict__:
            raise ValueError(
                "model.forward is already overridden (e.g. by an accelerate/diffusers offloading or caching "
                "hook); the recurrent forward would bypass it. Apply the ReHyAt patch before such hooks, "
                "or use forward_mode='parallel'"
            )
    if feature_maps is None:
        hybrid = build_hybrid_modules(model, config, blocks)
    else:
        hybrid = dict(feature_maps)
        _check_feature_maps(model, config, blocks, hybrid)

    context = _PatchContext(tuple(model.config.patch_size))
    originals: dict[int, Any] = {}
    for index in blocks:
        attn = model.blocks[index].attn1
        originals[index] = attn.processor
        attn.set_processor(ReHyAtWanAttnProcessor(hybrid[index]))
    handles = [model.rope.register_forward_hook(context.rope_hook, with_kwargs=True)]
    forward_fn = previous = None
    if forward_mode == "recurrent":
        previous = model.__dict__.get("forward", _MISSING)
        forward_fn = _make_recurrent_forward(model, context, config.attention.chunk_frames)
        model.forward = forward_fn
    setattr(model, _MARKER, context)
    return DiffusersReHyAtPatch(model, config, hybrid, forward_mode, context, originals, handles,
                                forward_fn, previous)


def build_hybrid_modules(
    model: nn.Module, config: ConversionConfig, blocks: tuple[int, ...]
) -> dict[int, HybridAttention]:
    """Fresh (untrained) φ for ``blocks`` of a diffusers Wan model, fp32 on the model's device."""
    heads, head_dim = _attention_layout(model)
    device = model.blocks[0].attn1.to_q.weight.device
    return {i: HybridAttention(heads, head_dim, config.attention, i).to(device) for i in blocks}


def _attention_layout(model: nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of the model's self-attention."""
    attn = model.blocks[0].attn1
    return attn.heads, attn.inner_dim // attn.heads


def _check_wan_model(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    blocks = getattr(model, "blocks", None)
    ok = (
        isinstance(model, nn.Module) and config is not None and hasattr(config, "patch_size")
        and isinstance(blocks, nn.ModuleList) and len(blocks) > 0
        and all(hasattr(b, "attn1") and hasattr(b.attn1, "set_processor") for b in blocks)
        and hasattr(model, "rope") and hasattr(model, "patch_embedding")
    )
    if not ok:
        raise TypeError(
            f"patch_diffusers_wan needs a diffusers WanTransformer3DModel; got {type(model).__name__}"
        )
    if any(getattr(b.attn1, "is_cross_attention", False) for b in blocks):
        raise TypeError("blocks[i].attn1 must be self-attention in a diffusers Wan transformer")


def _check_feature_maps(
    model: nn.Module, config: ConversionConfig, blocks: tuple[int, ...], hybrid: dict[int, HybridAttention]
) -> None:
    if sorted(hybrid) != list(blocks):
        raise ValueError(f"feature_maps cover blocks {sorted(hybrid)} but the config converts {list(blocks)}")
    heads, head_dim = _attention_layout(model)
    want = config.attention
    for index, module in hybrid.items():
        if not isinstance(module, HybridAttention):
            raise TypeError(f"feature_maps[{index}] must be a HybridAttention; got {type(module).__name__}")
        if module.block_index != index:
            raise ValueError(f"feature_maps[{index}] has block_index {module.block_index}")
        phi = module.feature_maps.phi_q
        if (phi.num_heads, phi.head_dim) != (heads, head_dim):
            raise ValueError(
                f"feature_maps[{index}] is for {phi.num_heads} heads × {phi.head_dim}; the model has "
                f"{heads} × {head_dim}"
            )
        got = module.config
        if (got.chunk_frames, got.overlap_frames, got.causal, got.variant, got.rate) != (
            want.chunk_frames, want.overlap_frames, want.causal, want.variant, want.rate
        ):
            raise ValueError(
                f"feature_maps[{index}] uses chunk_frames={got.chunk_frames}, overlap_frames="
                f"{got.overlap_frames}, causal={got.causal}, variant={got.variant!r}, rate={got.rate} but "
                f"config.attention has {want.chunk_frames}, {want.overlap_frames}, {want.causal}, "
                f"{want.variant!r}, {want.rate}"
            )


def _qkv_projections(attn: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``(B, N, H·d)`` of a self-attention, fused (``to_qkv``) or not."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        return q, k, v
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


# --------------------------------------------------------------------------------------------------
# Recurrent forward
# --------------------------------------------------------------------------------------------------


def _make_recurrent_forward(model: nn.Module, context: _PatchContext, chunk_frames: int):
    """The function installed as ``model.forward`` in recurrent mode (holds the model weakly)."""
    model_ref = weakref.ref(model)

    def recurrent(
        model: nn.Module,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return _recurrent_forward(model, context, chunk_frames, hidden_states, timestep,
                                  encoder_hidden_states, encoder_hidden_states_image, return_dict)

    try:  # same PEFT-LoRA "scale" handling of attention_kwargs as diffusers' forward
        from diffusers.utils.peft_utils import apply_lora_scale

        recurrent = apply_lora_scale("attention_kwargs")(recurrent)
    except ImportError:  # pragma: no cover - older diffusers: no LoRA scaling by kwargs
        pass

    def rehyat_recurrent_forward(*args: Any, **kwargs: Any) -> Any:
        """ReHyAt chunk-by-chunk forward (same arguments and output as the model's forward)."""
        target = model_ref()
        if target is None:  # pragma: no cover - the model owns this function
            raise RuntimeError("the patched model no longer exists")
        return recurrent(target, *args, **kwargs)

    # Advertise the model's own signature (pipelines inspect it) without referencing the model.
    rehyat_recurrent_forward.__signature__ = inspect.signature(model.forward)  # type: ignore[attr-defined]
    return rehyat_recurrent_forward


def _recurrent_forward(
    model: nn.Module, context: _PatchContext, chunk_frames: int, hidden_states: Tensor, timestep: Tensor,
    encoder_hidden_states: Tensor, encoder_hidden_states_image: Tensor | None, return_dict: bool,
) -> Any:
    """diffusers' Wan forward, computed Tc post-patch frames at a time with per-block ReHyAt states."""
    grid = wan_frame_grid(model, hidden_states)
    chunks = _DiffusersWanChunks(model, context, grid, hidden_states, timestep, encoder_hidden_states,
                                 encoder_hidden_states_image)
    states: dict[int, RecurrentState] = {}
    outputs = run_chunked_forward(chunks, grid=grid, num_blocks=len(model.blocks), chunk_frames=chunk_frames,
                                  states_out=states)
    context.last_states = states
    output = torch.cat(outputs, dim=2)  # (B, C_out, T', H', W') with the floored sizes
    if not return_dict:
        return (output,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=output)


class _DiffusersWanChunks:
    """:class:`rehyat.recurrent_dit.ChunkedDiT` over a diffusers ``WanTransformer3DModel``.

    Mirrors the model's forward: the condition embeddings (time, text, image) and the head's
    modulation are computed once; everything per token (patch embedding, blocks, head,
    unpatchify) runs on one chunk of frames. Per-token timesteps (Wan2.2 TI2V, ``timestep``
    ``(B, N)``) are sliced per chunk. Gradient checkpointing is not applied here (inference path).
    """

    def __init__(
        self, model: nn.Module, context: _PatchContext, grid: FrameGrid, hidden_states: Tensor,
        timestep: Tensor, encoder_hidden_states: Tensor, encoder_hidden_states_image: Tensor | None,
    ):
        self.model, self.context, self.grid = model, context, grid
        self.patch = tuple(model.config.patch_size)
        self.hidden_states = hidden_states  # (B, C, T, H, W)
        per_token = timestep.ndim == 2
        if per_token and timestep.shape[1] != grid.tokens:
            raise ValueError(
                f"per-token timestep has {timestep.shape[1]} entries but the latent has {grid.tokens} tokens"
            )
        seq_len = timestep.shape[1] if per_token else None
        temb, timestep_proj, text, image = model.condition_embedder(
            timestep.flatten() if per_token else timestep, encoder_hidden_states, encoder_hidden_states_image,
            timestep_seq_len=seq_len,
        )
        self.per_token = per_token
        # block modulation: (B, N, 6, C) per token, else (B, 6, C)
        self.timestep_proj = timestep_proj.unflatten(2 if per_token else 1, (6, -1))
        self.context_tokens = text if image is None else torch.cat([image, text], dim=1)  # (B, L, C)
        table = model.scale_shift_table.to(temb.device)  # (1, 2, C)
        if per_token:  # temb (B, N, C) -> shift, scale (B, N, C)
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            self.shift, self.scale = shift.squeeze(2), scale.squeeze(2)
        else:  # temb (B, C) -> shift, scale (B, 1, C)
            self.shift, self.scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        self._rope_key: tuple[int, int] | None = None
        self._rope: tuple[Tensor, Tensor] | None = None

    def _tokens(self, f0: int, f1: int) -> slice:
        p = self.grid.tokens_per_frame
        return slice(f0 * p, f1 * p)

    def _rotary(self, f0: int, f1: int) -> tuple[Tensor, Tensor]:
        """RoPE of the chunk at its absolute frame positions, cached across the blocks of a chunk."""
        if self._rope_key != (f0, f1):
            self._rope = wan_rotary_for_frames(self.model.rope, f0, f1, self.grid.height, self.grid.width)
            self._rope_key = (f0, f1)
        return self._rope

    def embed(self, f0: int, f1: int) -> Tensor:
        """Patch embedding of post-patch frames ``[f0, f1)`` → tokens ``(B, n·P, C)``."""
        p_t = self.patch[0]
        x = self.hidden_states[:, :, f0 * p_t:f1 * p_t]  # (B, C_in, n·p_t, H, W)
        x = self.model.patch_embedding(x)  # (B, C, n, H', W')
        return x.flatten(2).transpose(1, 2).contiguous()  # (B, n·P, C)

    def run_block(self, index: int, tokens: Tensor, f0: int, f1: int, run: ReHyAtRun) -> Tensor:
        """Block ``index`` on the chunk's tokens ``(B, n·P, C)``."""
        temb = self.timestep_proj[:, self._tokens(f0, f1)] if self.per_token else self.timestep_proj
        rotary = RotaryWithRun(self._rotary(f0, f1), run)
        return self.model.blocks[index](tokens, self.context_tokens, temb, rotary)

    def finish_chunk(self, tokens: Tensor, f0: int, f1: int) -> Tensor:
        """Head (norm, modulation, projection) and unpatchify → ``(B, C_out, n·p_t, H', W')``."""
        model = self.model
        rows = self._tokens(f0, f1)
        shift = self.shift[:, rows] if self.per_token else self.shift
        scale = self.scale[:, rows] if self.per_token else self.scale
        shift, scale = shift.to(tokens.device), scale.to(tokens.device)
        x = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        x = model.proj_out(x)  # (B, n·P, C_out·p_t·p_h·p_w)
        p_t, p_h, p_w = self.patch
        n, h, w = f1 - f0, self.grid.height, self.grid.width
        x = x.reshape(x.shape[0], n, h, w, p_t, p_h, p_w, -1)  # (B, n, h, w, p_t, p_h, p_w, C_out)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, n, p_t, h, p_h, w, p_w)
        return x.reshape(x.shape[0], x.shape[1], n * p_t, h * p_h, w * p_w)


__all__ = [
    "FORWARD_MODES",
    "DiffusersReHyAtPatch",
    "ForwardMode",
    "ReHyAtWanAttnProcessor",
    "RotaryWithRun",
    "apply_wan_rotary",
    "build_hybrid_modules",
    "patch_diffusers_wan",
    "wan_frame_grid",
    "wan_rotary_for_frames",
]

