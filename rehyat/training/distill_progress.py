"""A distillation run's progress (what a checkpoint stores) and its per-step choice of query chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import HybridAttentionConfig
from ..ops import chunk_layout


@dataclass
class DistillProgress:
    """Where a distillation run stands: counters, loss curves and training time (checkpointed)."""

    step: int = 0
    group: int = 0
    forward_in_group: int = 0
    mean_loss: list[float] = field(default_factory=list)
    block_loss: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_extra(self) -> dict[str, Any]:
        """The JSON ``extra`` of a checkpoint (see :meth:`RunFolder.save_checkpoint`)."""
        return {
            "step": self.step,
            "group": self.group,
            "forward_in_group": self.forward_in_group,
            "mean_loss": self.mean_loss,
            "block_loss": self.block_loss,
            "seconds": self.seconds,
        }

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> DistillProgress:
        """Inverse of :meth:`to_extra` (a checkpoint without ``seconds`` counts 0 s)."""
        return cls(
            step=extra["step"],
            group=extra["group"],
            forward_in_group=extra["forward_in_group"],
            mean_loss=list(extra["mean_loss"]),
            block_loss={k: list(v) for k, v in extra["block_loss"].items()},
            seconds=float(extra.get("seconds", 0.0)),
        )


def pick_query_chunks(
    frames: int, attention: HybridAttentionConfig, fraction: float, seed: int
) -> list[int] | None:
    """The query chunks one training step uses: a seeded random ``fraction`` of those with a linear
    part (None when ``fraction`` ≥ 1: all of them)."""
    if fraction >= 1:
        return None
    eligible = [
        c.index
        for c in chunk_layout(frames, attention.chunk_frames, attention.overlap_frames)
        if c.window_start > 0
    ]
    count = max(1, math.ceil(fraction * len(eligible)))
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(eligible), generator=generator)[:count]
    return sorted(eligible[i] for i in picked.tolist())
