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
  chunk (:mod:`.diffusers_chunks`) with the same arguments and output
  format as diffusers' forward; ``unpatch`` deletes the attribute again, which makes the class's
  forward visible as before. Patch *before* installing other forward wrappers (accelerate offload
  hooks, diffusers hook registries): a model whose ``forward`` is already overridden is refused in
  recurrent mode, since the recurrent forward would silently bypass that wrapper.

The last recurrent forward's states are kept on the patch (:attr:`DiffusersReHyAtPatch.last_states`);
run one recurrent forward of a patched model at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from torch import Tensor, nn

from ..config import ConversionConfig, check_recurrent_capable
from ..hybrid import HybridAttention, ReHyAtRun, build_attention
from ..ops import RecurrentState
from .diffusers_chunks import make_recurrent_forward
from .diffusers_rope import RotaryWithRun, apply_wan_rotary, latent_frame_grid

ForwardMode = Literal["parallel", "recurrent"]
FORWARD_MODES: tuple[str, ...] = ("parallel", "recurrent")
_MARKER = "_rehyat_patch_context"  # attribute on a patched model (holds its _PatchContext)
_MISSING = object()


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
        grid = latent_frame_grid(hidden_states, self.patch_size)
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
        check_recurrent_capable(blocks, num_blocks, config.attention)
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
        forward_fn = make_recurrent_forward(model, context, config.attention.chunk_frames)
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
    return {i: build_attention(heads, head_dim, config.attention, i).to(device) for i in blocks}


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
        got, wanted = module.config.to_dict(), want.to_dict()  # ReHyAt or a baseline: same keys
        differ = [k for k in wanted if k != "feature_map" and got.get(k) != wanted[k]]  # φ shape: above
        if differ:
            raise ValueError(
                f"feature_maps[{index}] uses "
                + ", ".join(f"{k}={got.get(k)!r}" for k in differ)
                + " but config.attention has "
                + ", ".join(f"{k}={wanted[k]!r}" for k in differ)
            )


def _qkv_projections(attn: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``(B, N, H·d)`` of a self-attention, fused (``to_qkv``) or not."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        return q, k, v
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


__all__ = [
    "FORWARD_MODES",
    "DiffusersReHyAtPatch",
    "ForwardMode",
    "ReHyAtWanAttnProcessor",
    "build_hybrid_modules",
    "patch_diffusers_wan",
]

