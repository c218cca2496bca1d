"""Model-agnostic ReHyAt self-attention for one DiT block, and the per-forward run context.

Model adapters (ComfyUI, diffusers) compute q, k, v with the model's own projections, norms and
RoPE, then hand them to :class:`HybridAttention` together with a :class:`ReHyAtRun` that says
how the current forward is laid out (frame grid) and whether it runs in parallel or chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor, nn

from .config import HybridAttentionConfig, require_int
from .feature_maps import FeatureMapPair
from .ops import RecurrentState, Scratch, rehyat_attention, rehyat_step

RunMode = Literal["parallel", "recurrent"]


@dataclass(frozen=True)
class FrameGrid:
    """Token grid of one forward after patching: frames × height × width (frame-major tokens)."""

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            require_int(f"FrameGrid.{name}", getattr(self, name), low=1)

    @property
    def tokens_per_frame(self) -> int:
        """P = height · width."""
        return self.height * self.width

    @property
    def tokens(self) -> int:
        """N = frames · P."""
        return self.frames * self.tokens_per_frame


@dataclass
class ReHyAtRun:
    """What one model forward tells its hybrid attention layers.

    Attributes:
        grid: token grid of the tokens the layers receive in this call.
        mode: "parallel" (all frames at once) or "recurrent" (this call holds one chunk; each layer
            continues from its entry in ``states`` and writes the next one back).
        states: per block index, the recurrent state after the previous chunks.
        scratch: inference buffers shared by the layers of this forward (one set, reused block
            after block instead of fresh chunk-sized allocations in every layer).
    """

    grid: FrameGrid
    mode: RunMode = "parallel"
    states: dict[int, RecurrentState] = field(default_factory=dict)
    scratch: Scratch = field(default_factory=Scratch)


class HybridAttention(nn.Module):
    """ReHyAt attention of one block: its φq/φk and its chunking config.

    Args:
        num_heads, head_dim: the block's attention layout.
        config: Tc, To, causal and φ shape.
        block_index: the block's index in the model (key of its recurrent state).
    """

    CONFIG: ClassVar[type[HybridAttentionConfig]] = HybridAttentionConfig
    """The config class this module runs (the baselines have their own: :mod:`rehyat.baselines`)."""

    def __init__(self, num_heads: int, head_dim: int, config: HybridAttentionConfig, block_index: int):
        super().__init__()
        if type(config) is not self.CONFIG:
            raise ValueError(
                f"{type(self).__name__} runs a {self.CONFIG.__name__}; got a {type(config).__name__}: "
                "build the block's module with rehyat.hybrid.build_attention"
            )
        self.config = config
        self.block_index = block_index
        self.feature_maps = FeatureMapPair(num_heads, head_dim, config.feature_map)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun) -> Tensor:
        """Attend ``q, k, v`` ``(B, H, N, d)`` laid out on ``run.grid``; returns ``(B, H, N, d)``."""
        self._check_call(q, run)
        return self._attend(q, k, v, run)

    def _check_call(self, q: Tensor, run: ReHyAtRun) -> None:
        if q.shape[2] != run.grid.tokens:
            raise ValueError(
                f"block {self.block_index}: got {q.shape[2]} tokens but the frame grid "
                f"{run.grid.frames}×{run.grid.height}×{run.grid.width} has {run.grid.tokens}"
            )
        phi_device = self.feature_maps.phi_q.weight1.device
        if phi_device != q.device:
            raise RuntimeError(
                f"block {self.block_index}: φ is on {phi_device} but the activations are on {q.device}. "
                "φ is part of the model's module tree: move the model (ModelPatcher / .to()) instead of "
                "the tensors"
            )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun) -> Tensor:
        cfg, maps, p = self.config, self.feature_maps, run.grid.tokens_per_frame
        if run.mode == "parallel":
            return rehyat_attention(
                q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p,
                chunk_frames=cfg.chunk_frames, overlap_frames=cfg.overlap_frames, causal=cfg.causal,
                scratch=run.scratch,
            )
        if not cfg.causal:
            raise ValueError(f"block {self.block_index} is non-causal: it cannot run recurrently")
        state = run.states.get(self.block_index)
        out, run.states[self.block_index] = rehyat_step(
            q, k, v, state if state is not None else RecurrentState.empty(k),
            phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=cfg.chunk_frames,
            overlap_frames=cfg.overlap_frames, scratch=run.scratch,
        )
        return out


def build_attention(
    num_heads: int, head_dim: int, config: HybridAttentionConfig, block_index: int
) -> HybridAttention:
    """The attention module of one converted block: :class:`HybridAttention` for ReHyAt; for a
    fidelity-baseline config (:class:`rehyat.baselines.BaselineAttentionConfig`) the baseline module
    of :mod:`rehyat.baselines`, which has the same interface (and φ, where the baseline uses them)."""
    if config.baseline is None:
        return HybridAttention(num_heads, head_dim, config, block_index)
    from .baselines import BaselineAttention  # late: the baselines build on this module

    return BaselineAttention(num_heads, head_dim, config, block_index)


def check_hybrid_modules(
    hybrid: Mapping[int, HybridAttention],
    blocks: Sequence[int],
    attention: HybridAttentionConfig,
    layout: tuple[int, int] | None = None,
) -> None:
    """Refuse φ modules that do not fit a conversion: raise ValueError saying what differs.

    Args:
        hybrid: block index → its :class:`HybridAttention`.
        blocks: the block indices the conversion converts (ascending).
        attention: the conversion's attention config; every module must have been built with it.
        layout: ``(num_heads, head_dim)`` of the model's attention, checked when given.
    """
    if sorted(hybrid) != list(blocks):
        raise ValueError(f"φ modules cover blocks {sorted(hybrid)} but the config converts {list(blocks)}")
    for index, module in hybrid.items():
        if module.config != attention or module.block_index != index:
            raise ValueError(
                f"φ module of block {index} was built for {module.config} (block {module.block_index}) "
                f"but the conversion uses {attention}"
            )
        maps = module.feature_maps.phi_q
        if layout is not None and (maps.num_heads, maps.head_dim) != layout:
            raise ValueError(
                f"φ of block {index} has {maps.num_heads} heads × {maps.head_dim} but the model has "
                f"{layout[0]} × {layout[1]}"
            )
