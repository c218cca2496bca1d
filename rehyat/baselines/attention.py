"""One block's baseline attention (linear-only, windowed softmax, uniform hybrid), parallel form only."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..config import HybridAttentionConfig
from ..hybrid import HybridAttention, ReHyAtRun
from ..ops.linear_only import linear_attention
from ..ops.uniform_hybrid import uniform_hybrid_attention
from ..ops.windowed_softmax import windowed_softmax_attention
from .config import BaselineAttentionConfig


class BaselineAttention(HybridAttention):
    """The attention of ``config.variant`` ("linear_only", "windowed_softmax" or "uniform_hybrid").

    Same constructor (with a :class:`BaselineAttentionConfig`), φ modules and checks as
    :class:`~rehyat.hybrid.HybridAttention`; the windowed softmax uses no φ (they stay untrained),
    the others use φq / φk over the tokens they treat linearly. ``run.mode`` must be "parallel".
    """

    CONFIG: ClassVar[type[HybridAttentionConfig]] = BaselineAttentionConfig
    config: BaselineAttentionConfig

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun) -> Tensor:
        cfg, maps = self.config, self.feature_maps
        if run.mode != "parallel":
            raise ValueError(
                f"block {self.block_index} runs the {cfg.variant!r} baseline, which has no recurrent form: "
                "use the parallel forward, or ReHyAt attention for chunk-by-chunk generation"
            )
        if cfg.variant == "linear_only":
            return linear_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k)  # (B, H, N, d)
        if cfg.variant == "uniform_hybrid":
            return uniform_hybrid_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, rate=cfg.rate)
        return windowed_softmax_attention(
            q, k, v, tokens_per_frame=run.grid.tokens_per_frame, chunk_frames=cfg.chunk_frames,
            overlap_frames=cfg.overlap_frames,
        )
