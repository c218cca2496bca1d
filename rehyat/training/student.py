"""One block's student: its φ (inside a :class:`~rehyat.hybrid.HybridAttention`), its optimizer, its loss.

Each converted block learns on its own (paper §3.4.1): its student computes ReHyAt's parallel causal
form from the teacher's ``q, k, v`` — the softmax part has no parameters, only φq / φk train — and
takes its own AdamW step on the distance to the teacher's attention output ``y``. Blocks never share
gradients; under data parallelism a block's gradients are averaged over ranks before its step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..hybrid import HybridAttention, ReHyAtRun
from ..ops import RecurrentState, chunk_layout, rehyat_attention
from .capture import CapturedAttention
from .distributed import DistributedContext, all_reduce_mean_

LossKind = Literal["l2", "mse"]
LOSSES: tuple[str, ...] = ("l2", "mse")


def distillation_loss(y: Tensor, y_hat: Tensor, kind: LossKind) -> Tensor:
    """Distance between teacher ``y`` and student ``ŷ`` ``(B, H, N, d)``, averaged over the batch.

    ``"l2"``: the paper's ‖y − ŷ‖ (Euclidean norm of each batch item's whole output), mean over items.
    ``"mse"``: mean squared error over every element. Computed in fp32.
    """
    error = (y_hat.float() - y.float()).flatten(1)  # (B, H·N·d)
    if kind == "l2":
        return error.norm(dim=1).mean()
    if kind == "mse":
        return error.square().mean()
    raise ValueError(f"loss must be one of {LOSSES}; got {kind!r}")


@dataclass
class ErrorSums:
    """Running sums for relative L2 and cosine of attention outputs (per block, one φ version)."""

    error_sq: float = 0.0  # Σ ‖y − ŷ‖²
    target_sq: float = 0.0  # Σ ‖y‖²
    cosine: float = 0.0  # Σ over batch items of cos(y, ŷ)
    items: int = 0

    def add(self, y: Tensor, y_hat: Tensor) -> None:
        """Accumulate one capture (``(B, H, N, d)`` each)."""
        y, y_hat = y.float().flatten(1), y_hat.float().flatten(1)
        self.error_sq += float((y - y_hat).square().sum())
        self.target_sq += float(y.square().sum())
        self.cosine += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=1).sum())
        self.items += y.shape[0]

    def as_tensor(self) -> Tensor:
        """``[error_sq, target_sq, cosine, items]`` in fp64 (for summing over ranks)."""
        return torch.tensor(
            [self.error_sq, self.target_sq, self.cosine, float(self.items)], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, values: Tensor) -> ErrorSums:
        """Inverse of :meth:`as_tensor`."""
        a, b, c, n = (float(x) for x in values)
        return cls(a, b, c, int(round(n)))

    def summary(self) -> dict[str, float]:
        """``{"relative_l2": sqrt(Σ‖y−ŷ‖² / Σ‖y‖²), "cosine": mean cos}`` over everything added."""
        if not self.items:
            return {"relative_l2": float("nan"), "cosine": float("nan"), "items": 0}
        rel = (self.error_sq / self.target_sq) ** 0.5 if self.target_sq > 0 else float("inf")
        return {"relative_l2": rel, "cosine": self.cosine / self.items, "items": self.items}


class BlockStudent:
    """φ of one block plus its AdamW optimizer.

    Args:
        hybrid: the block's :class:`HybridAttention` (φ on the training device, fp32).
        lr, betas, weight_decay: AdamW settings (paper: lr 1e-3).
        loss: ``"l2"`` (paper) or ``"mse"``.
        ctx: data-parallel context; gradients are averaged over its ranks before each step.
    """

    def __init__(
        self,
        hybrid: HybridAttention,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        loss: LossKind = "l2",
        ctx: DistributedContext | None = None,
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
        self.hybrid = hybrid
        self.loss_kind = loss
        self.ctx = ctx
        self.parameters = list(hybrid.feature_maps.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, betas=betas, weight_decay=weight_decay)

    @property
    def block(self) -> int:
        """The block index."""
        return self.hybrid.block_index

    def predict(self, captured: CapturedAttention) -> Tensor:
        """The student's output ``ŷ`` ``(B, H, N, d)`` for the teacher's ``q, k, v``."""
        return self.hybrid(captured.q, captured.k, captured.v, ReHyAtRun(grid=captured.grid))

    def predict_chunks(self, captured: CapturedAttention, chunks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(ŷ, y)`` of the query chunks ``chunks`` only, ``(B, H, n_selected, d)`` each (causal blocks).

        Each chunk runs ReHyAt's recurrent step from an exact state built from the teacher's keys: S, z
        over the frames before its softmax window (through φk, so φk gets its gradient) and the
        overlap frames — the same numbers as those rows of :meth:`predict`, without the other
        chunks' queries, softmax windows and graphs.
        """
        cfg = self.hybrid.config
        if not cfg.causal:
            raise ValueError(
                "a subset of query chunks needs a causal block (query_chunk_fraction = 1 otherwise)"
            )
        q, k, v, p = captured.q, captured.k, captured.v, captured.grid.tokens_per_frame
        layout = chunk_layout(captured.grid.frames, cfg.chunk_frames, cfg.overlap_frames)
        maps = self.hybrid.feature_maps
        outputs, targets = [], []
        for index in sorted(chunks):
            chunk = layout[index]
            start, first, end = chunk.window_start * p, chunk.frame_start * p, chunk.frame_end * p
            empty = RecurrentState.empty(k)  # S, z of width 0: nothing left the softmax window yet
            kv, k_sum = empty.kv, empty.k_sum
            if start:
                features = maps.phi_k(k[:, :, :start])  # (B, H, n, d') fp32
                kv = features.transpose(-1, -2) @ v[:, :, :start].to(features.dtype)  # (B, H, d', d)
                k_sum = features.sum(2)  # (B, H, d')
            state = RecurrentState(
                kv=kv,
                k_sum=k_sum,
                k_overlap=k[:, :, start:first],
                v_overlap=v[:, :, start:first],
                frames_seen=chunk.frame_start,
            )
            outputs.append(
                rehyat_attention(
                    q[:, :, first:end],
                    k[:, :, first:end],
                    v[:, :, first:end],
                    phi_q=maps.phi_q,
                    phi_k=maps.phi_k,
                    tokens_per_frame=p,
                    chunk_frames=cfg.chunk_frames,
                    overlap_frames=cfg.overlap_frames,
                    initial_state=state,
                )
            )
            targets.append(captured.y[:, :, first:end])
        return torch.cat(outputs, dim=2), torch.cat(targets, dim=2)

    def train_step(self, captured: CapturedAttention, chunks: Sequence[int] | None = None) -> float:
        """One AdamW step on this capture (all queries, or only ``chunks``); returns the loss (rank mean)."""
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=False)
            if chunks is None:
                loss = distillation_loss(captured.y, self.predict(captured), self.loss_kind)
            else:
                y_hat, y = self.predict_chunks(captured, chunks)
                loss = distillation_loss(y, y_hat, self.loss_kind)
            loss.backward()
        value = loss.detach().reshape(1).to(torch.float32)
        grads = [p.grad for p in self.parameters]
        all_reduce_mean_([*grads, value], self.ctx)
        self.optimizer.step()
        return float(value)

    @torch.no_grad()
    def measure(self, captured: CapturedAttention, sums: ErrorSums) -> None:
        """Add this capture's error to ``sums`` (no gradient, φ unchanged)."""
        sums.add(captured.y, self.predict(captured))
