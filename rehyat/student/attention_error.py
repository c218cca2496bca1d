"""Per-block attention error of converted attention against the teacher's softmax (stage-1 evidence).

On held-out teacher trajectories (prompts whose scenes no distillation saw, their own seeds), each
captured self-attention ``(q, k, v) → y`` of every block is recomputed by each case and scored by
relative L2 ``sqrt(Σ‖y − ŷ‖² / Σ‖y‖²)`` pooled over the denoising steps. Reference cases come with it:

- ``windowed softmax``: ReHyAt's softmax windows alone (no linear part);
- ``block-causal oracle``: exact softmax over every frame up to the chunk's end — the best any
  chunk-causal student can reach (:mod:`rehyat.ops.block_causal`).

A φ set's *gap closed* is ``(e_window − e_φ) / (e_window − e_oracle)`` per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..hybrid import HybridAttention, ReHyAtRun
from ..ops.block_causal import block_causal_attention
from ..ops.windowed_softmax import windowed_softmax_attention
from ..teacher.evaluate import held_out_pairs
from ..teacher.model import SamplingConfig, Teacher
from ..training.capture import CapturedAttention
from ..training.options import TeacherSampling
from ..training.student import ErrorSums
from ..training.trajectories import Trajectory
from ..training.wandit_teacher import WanDiTTeacher

WINDOWED = "windowed softmax"
ORACLE = "block-causal oracle"


class _ErrorSink:
    """Pools each case's error per block over every captured forward."""

    def __init__(
        self, cases: Mapping[str, Mapping[int, HybridAttention]], chunk_frames: int, overlap_frames: int
    ):
        self.cases, self.tc, self.to = cases, chunk_frames, overlap_frames
        self.sums: dict[str, dict[int, ErrorSums]] = {}

    def begin_forward(self) -> None:
        pass

    def end_forward(self) -> None:
        pass

    def _add(self, case: str, block: int, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        self.sums.setdefault(case, {}).setdefault(block, ErrorSums()).add(y, y_hat)

    @torch.no_grad()
    def attention(self, captured: CapturedAttention) -> None:
        q, k, v, y, b = captured.q, captured.k, captured.v, captured.y, captured.block  # (B, H, N, d)
        p = captured.grid.tokens_per_frame
        self._add(WINDOWED, b, y, windowed_softmax_attention(
            q, k, v, tokens_per_frame=p, chunk_frames=self.tc, overlap_frames=self.to))
        self._add(ORACLE, b, y, block_causal_attention(q, k, v, tokens_per_frame=p, chunk_frames=self.tc))
        for name, hybrid in self.cases.items():
            if b in hybrid:
                self._add(name, b, y, hybrid[b](q, k, v, ReHyAtRun(grid=captured.grid)))


def attention_errors(
    teacher: Teacher,
    cases: Mapping[str, Mapping[int, HybridAttention]],
    *,
    chunk_frames: int,
    overlap_frames: int,
    trajectories: int = 32,
    trajectory_steps: int = 10,
    sampling: SamplingConfig | None = None,
) -> dict[str, Any]:
    """Relative L2 per case and block on ``trajectories`` held-out teacher trajectories.

    Args:
        teacher: the softmax teacher.
        cases: name → φ modules per block (e.g. ``{"stage 1": hybrid, "untrained φ": initial}``).
        chunk_frames, overlap_frames: Tc and To of the reference cases.
        trajectories: held-out (prompt, seed) pairs (:func:`rehyat.teacher.evaluate.held_out_pairs`).
        trajectory_steps: Euler steps of each trajectory (every step's forward is scored).
        sampling: guidance and shift (default: the teacher's).

    Returns:
        ``{"cases": {name: {"blocks": {block: rel_l2}, "mean": …}}, "gap_closed": {name: mean},
        "trajectories": n, "forwards_per_trajectory": steps}``.
    """
    sampling = sampling or teacher.config.sampling
    pairs = held_out_pairs(trajectories)
    prompts = [prompt for prompt, _ in pairs]
    with torch.no_grad():
        features = teacher.encode(prompts + [""])
    config = teacher.config
    latent_shape = (config.dit.in_dim, config.clip.frames, config.latent_size, config.latent_size)
    teacher_sampling = TeacherSampling(
        steps=trajectory_steps, cfg=sampling.guidance, shift=sampling.shift, eta=0.0, capture_stride=1
    )
    wrapped = WanDiTTeacher(teacher.dit, list(features[:-1]), features[-1], latent_shape, teacher_sampling)
    sink = _ErrorSink(cases, chunk_frames, overlap_frames)
    blocks = sorted({b for hybrid in cases.values() for b in hybrid}) or list(range(config.dit.num_layers))
    for index, (_, seed) in enumerate(pairs):
        with wrapped.capture(blocks, sink) as capture:
            wrapped.sample([Trajectory(index=index, conditioning=index, seed=seed)], capture)
    out: dict[str, Any] = {"cases": {}, "gap_closed": {}, "trajectories": len(pairs),
                           "forwards_per_trajectory": trajectory_steps}
    for name, per_block in sink.sums.items():
        errors = {b: per_block[b].summary()["relative_l2"] for b in sorted(per_block)}
        out["cases"][name] = {"blocks": {str(b): e for b, e in errors.items()},
                              "mean": sum(errors.values()) / len(errors)}
    window, oracle = out["cases"][WINDOWED]["blocks"], out["cases"][ORACLE]["blocks"]
    for name in cases:
        shares = [
            (window[b] - e) / (window[b] - oracle[b])
            for b, e in out["cases"][name]["blocks"].items()
            if window[b] - oracle[b] > 1e-12
        ]
        out["gap_closed"][name] = sum(shares) / len(shares) if shares else None
    return out
