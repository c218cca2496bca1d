"""The capture sinks of a :class:`~rehyat.training.distill.Distiller`: what happens to each block's
captured attention during a teacher forward — one training step (:class:`TrainSink`) or the
held-out error sums before / after (:class:`EvalSink`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .capture import CapturedAttention
from .student import BlockStudent, ErrorSums

if TYPE_CHECKING:
    from .distill import Distiller


class TrainSink:
    """Trains every block on each captured forward; skips the first ``replay`` forwards (resume)."""

    def __init__(self, distiller: Distiller, replay: int):
        self.distiller, self.replay = distiller, replay
        self.forwards = 0
        self.training = False
        self.losses: dict[int, float] = {}

    def begin_forward(self) -> None:
        self.forwards += 1
        self.training = self.forwards > self.replay
        self.distiller._mid_step = self.training
        self.losses = {}

    def attention(self, captured: CapturedAttention) -> None:
        if self.training:
            chunks = self.distiller.query_chunks(captured.grid.frames, captured.block)
            self.losses[captured.block] = self.distiller.students[captured.block].train_step(captured, chunks)

    def end_forward(self) -> None:
        if self.training:
            missing = set(self.distiller.blocks) - set(self.losses)
            if missing:
                raise RuntimeError(f"the teacher forward never reached blocks {sorted(missing)}")
            self.distiller._after_step(self.losses)


class EvalSink:
    """Accumulates before/after errors per block."""

    def __init__(self, distiller: Distiller):
        self.distiller = distiller
        self.sums = {b: (ErrorSums(), ErrorSums()) for b in distiller.blocks}
        self._before = {b: BlockStudent(m, lr=1.0) for b, m in distiller.initial.items()}

    def begin_forward(self) -> None:
        pass

    def attention(self, captured: CapturedAttention) -> None:
        before, after = self.sums[captured.block]
        self._before[captured.block].measure(captured, before)
        self.distiller.students[captured.block].measure(captured, after)

    def end_forward(self) -> None:
        pass
