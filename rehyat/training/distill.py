"""Stage-1 φ distillation (paper §3.4.1), online: no activation store.

The softmax teacher is sampled over (prompt, seed) trajectories. During every captured teacher
forward, each target block's ``q, k, v`` and attention output reach that block's
:class:`~rehyat.training.student.BlockStudent`, which takes one AdamW step right there — so one
teacher forward trains every block, blocks never share gradients, and peak memory is the teacher's
forward plus one block's student graph (the captured tensors are dropped before the next block);
``query_chunk_fraction < 1`` shrinks that graph further by training each step on a random subset of
the query chunks (see :class:`~rehyat.training.options.DistillOptions`).

Scale: under ``torchrun`` each rank samples its share of every global batch of trajectories and a
block's φ gradients are averaged over ranks before its step — the same numbers (to rounding) as one
process sampling the whole batch. Resume: checkpoints (φ, AdamW states, counters) go to a
:class:`~rehyat.training.runs.RunFolder`; a resumed run replays the interrupted batch of
trajectories without training on the forwards already used (the teacher is deterministic), so it
ends with the same φ as an uninterrupted run. Output: a φ file written with
:func:`rehyat.weights.save_phi_weights`, a JSON report and a loss-curve PNG.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import ConversionConfig
from ..hybrid import HybridAttention, build_attention
from ..weights import BaseModelInfo, apply_phi_tensors, collect_phi_tensors, save_phi_weights
from .capture import AttentionCapture, CaptureSink, check_blocks
from .distill_progress import DistillProgress, pick_query_chunks
from .distill_sinks import EvalSink, TrainSink
from .distributed import DistributedContext, all_reduce_mean_
from .options import DistillOptions, check_clip_length, check_distillable
from .plots import loss_curve_png_bytes
from .runs import RunFolder
from .student import BlockStudent, ErrorSums
from .trajectories import Trajectory, TrajectoryPlan


class Teacher(Protocol):
    """A softmax Wan that samples trajectories with capture (see :mod:`rehyat.training.capture`)."""

    num_blocks: int
    latent_frames: int

    def capture(self, blocks: Sequence[int], sink: CaptureSink) -> AttentionCapture: ...

    def sample(self, trajectories: Sequence[Trajectory], capture: AttentionCapture) -> Any: ...

    def base_info(self) -> BaseModelInfo: ...

    def fingerprint(self) -> list[float]: ...

    def describe(self) -> dict[str, Any]: ...


class DistillCancelled(Exception):
    """Raised when ``should_stop`` asked to stop (the run folder then holds a checkpoint to resume from)."""


class _Finished(Exception):
    """Internal: the last iteration is done; stop the teacher mid-trajectory."""


@dataclass
class DistillResult:
    """What a finished run produced.

    Attributes:
        hybrid: trained φ per block (fp32, on the training device).
        report: the JSON report (per-block held-out errors before/after, counters, settings).
        curves: loss per step, ``"mean"`` over blocks and ``"block N"``.
        phi_path: the φ file written (None if none was requested).
        run_path: the run folder (None without one).
    """

    hybrid: dict[int, HybridAttention]
    report: dict[str, Any]
    curves: dict[str, list[float]]
    phi_path: Path | None = None
    run_path: Path | None = None


class Distiller:
    """Trains φ of ``conversion``'s blocks against ``teacher``.

    Args:
        teacher: the softmax model and its sampler.
        conversion: blocks, Tc, To, causal and φ shape.
        options: optimisation and bookkeeping (paper defaults).
        num_prompts: prompts the teacher can be conditioned on (split into training / held out).
        run: the run folder (resume + checkpoints); None trains without checkpoints.
        ctx: data-parallel context (a single process by default).
        device: where φ live (the teacher's compute device).
        on_step: called after every step with ``(step, iterations, mean loss)`` (progress bars).
        should_stop: polled after every step; True checkpoints and raises :class:`DistillCancelled`.
    """

    def __init__(
        self,
        teacher: Teacher,
        conversion: ConversionConfig,
        options: DistillOptions,
        num_prompts: int,
        *,
        run: RunFolder | None = None,
        ctx: DistributedContext | None = None,
        device: torch.device | str = "cpu",
        on_step: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.teacher, self.conversion, self.options = teacher, conversion, options
        self.blocks = check_blocks(conversion.resolve_blocks(teacher.num_blocks), teacher.num_blocks)
        check_clip_length(teacher.latent_frames, conversion.attention)
        check_distillable(conversion.attention, options)
        self.plan = TrajectoryPlan.build(num_prompts, options)
        self.ctx = ctx or DistributedContext()
        self.global_batch = options.batch_size * self.ctx.world_size
        self.plan.check_seeds(self._trajectories_needed())
        self.run, self.device = run, torch.device(device)
        self.on_step, self.should_stop = on_step, should_stop
        self.initial = self._build_hybrid()
        self.hybrid = self._build_hybrid()
        self.students = {
            b: BlockStudent(
                self.hybrid[b],
                lr=options.lr,
                weight_decay=options.weight_decay,
                loss=options.loss,
                ctx=self.ctx,
            )
            for b in self.blocks
        }
        self.progress = DistillProgress(block_loss={str(b): [] for b in self.blocks})
        self._mid_step = False

    # ----------------------------------------------------------------------------------- training

    def train(self) -> DistillProgress:
        """Run (or resume) the optimisation up to ``options.iterations`` steps."""
        self._resume()
        started = time.perf_counter() - self.progress.seconds
        try:
            while self.progress.step < self.options.iterations:
                group = self.plan.group(self.progress.group, self.global_batch)
                mine = group[self.ctx.rank :: self.ctx.world_size]
                sink = TrainSink(self, replay=self.progress.forward_in_group)
                with self.teacher.capture(self.blocks, sink) as capture:
                    self.teacher.sample(mine, capture)
                self.progress.group += 1
                self.progress.forward_in_group = 0
        except _Finished:
            pass
        except BaseException:
            # Cancel button, Ctrl-C or an error between two steps: keep the finished steps. (A failure
            # inside a step — some blocks stepped, others not — keeps the last periodic checkpoint;
            # so does a multi-process run, whose other ranks may not reach the same point.)
            self.progress.seconds = time.perf_counter() - started
            if not self._mid_step and self.ctx.world_size == 1:
                self._checkpoint()
            raise
        finally:
            self._mid_step = False
        self.progress.seconds = time.perf_counter() - started
        self._checkpoint()
        return self.progress

    def _after_step(self, losses: dict[int, float]) -> None:
        p = self.progress
        p.step += 1
        p.forward_in_group += 1
        mean = sum(losses.values()) / len(losses)
        p.mean_loss.append(mean)
        for block, value in losses.items():
            p.block_loss[str(block)].append(value)
        self._mid_step = False  # every block has stepped: a consistent state to checkpoint
        if self.on_step is not None:
            self.on_step(p.step, self.options.iterations, mean)
        if p.step >= self.options.iterations:
            raise _Finished
        if p.step % self.options.checkpoint_every == 0:
            self._checkpoint()
        if self.should_stop is not None and self.should_stop():
            raise DistillCancelled(f"cancelled at step {p.step}: checkpoint written, run again to resume")

    # -------------------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict[str, Any]:
        """Relative L2 and cosine of every block's attention output on the held-out trajectories,
        with the initial φ ("before") and the current φ ("after")."""
        held_out = self.plan.held_out()
        mine = held_out[self.ctx.rank :: self.ctx.world_size]
        sink = EvalSink(self)
        for start in range(0, len(mine), self.options.batch_size):
            with self.teacher.capture(self.blocks, sink) as capture:
                self.teacher.sample(mine[start : start + self.options.batch_size], capture)
        blocks: dict[str, Any] = {}
        for b in self.blocks:
            before, after = sink.sums[b]
            totals = torch.stack([before.as_tensor(), after.as_tensor()]).to(self.ctx.device)  # nccl: on GPU
            all_reduce_mean_([totals], self.ctx)  # the mean of the sums, times world: the sums
            before, after = (ErrorSums.from_tensor(row.cpu() * self.ctx.world_size) for row in totals)
            blocks[str(b)] = {"before": before.summary(), "after": after.summary()}
        return {
            "trajectories": [{"prompt": t.conditioning, "seed": t.seed} for t in held_out],
            "prompts_held_out": list(self.plan.eval_prompts) != list(self.plan.train_prompts),
            "blocks": blocks,
        }

    # ---------------------------------------------------------------------------------- outputs

    def report(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """The JSON report of the run."""
        p = self.progress
        return {
            "steps": p.step,
            "trajectories": self.trajectories_used(),
            "global_batch": self.global_batch,
            "world_size": self.ctx.world_size,
            "train_seconds": p.seconds,
            "final_loss": {str(b): (v[-1] if v else None) for b, v in p.block_loss.items()},
            "held_out": evaluation,
            "conversion": self.conversion.to_dict(),
            "options": self.options.to_dict(),
            "teacher": self.teacher.describe(),
        }

    def save_phi(self, path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
        """Write the trained φ atomically to a new file (``FileExistsError`` if ``path`` exists)."""
        training = {
            "steps": report["steps"],
            "trajectories": report["trajectories"],
            "held_out": {
                b: {"before": v["before"], "after": v["after"]}
                for b, v in report["held_out"]["blocks"].items()
            },
            "options": report["options"],
        }
        args = (path, self.hybrid, self.conversion, self.teacher.base_info(), self.teacher.fingerprint())
        return save_phi_weights(*args, training=training, replace=False)

    def query_chunks(self, frames: int, block: int) -> list[int] | None:
        """The query chunks block ``block`` trains on at the current step (None: all of them)."""
        seed = self.options.seed * 1_000_003 + self.progress.step * 1009 + block
        return pick_query_chunks(frames, self.conversion.attention, self.options.query_chunk_fraction, seed)

    def trajectories_used(self) -> int:
        """Training trajectories sampled so far (a batch counts once any of its forwards trained)."""
        p = self.progress
        return (p.group + (1 if p.forward_in_group else 0)) * self.global_batch

    def curves(self) -> dict[str, list[float]]:
        """Loss per step: the mean over blocks and each block."""
        curves = {"mean over blocks": list(self.progress.mean_loss)}
        if len(self.blocks) <= 8:
            curves.update({f"block {b}": list(v) for b, v in self.progress.block_loss.items()})
        return curves

    # ---------------------------------------------------------------------------------- helpers

    def _trajectories_needed(self) -> int:
        per_batch = self.options.iterations  # an upper bound: ≥ 1 captured forward per trajectory batch
        return per_batch * self.global_batch

    def _build_hybrid(self) -> dict[int, HybridAttention]:
        info = self.teacher.base_info()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.phi_seed)
            hybrid = {
                b: build_attention(info.num_heads, info.head_dim, self.conversion.attention, b)
                for b in self.blocks
            }
        return {b: m.to(self.device) for b, m in hybrid.items()}

    def _checkpoint(self) -> None:
        if self.run is None or not self.ctx.is_main:
            self.ctx.barrier()
            return
        tensors = collect_phi_tensors(self.hybrid)
        optim = {str(b): s.optimizer.state_dict() for b, s in self.students.items()}
        self.run.save_checkpoint(self.progress.step, tensors, optim, self.progress.to_extra())
        self.ctx.barrier()

    def _resume(self) -> None:
        if self.run is None:
            return
        checkpoint = self.run.load_latest()
        if checkpoint is None:
            return
        apply_phi_tensors(self.hybrid, checkpoint.tensors)
        for b, student in self.students.items():
            student.optimizer.load_state_dict(checkpoint.optimizer_state[str(b)])
        self.progress = DistillProgress.from_extra(checkpoint.extra)


def run_identity(distiller: Distiller) -> dict[str, Any]:
    """What a run folder is bound to: the teacher, the conversion and the options that shape the data.

    ``iterations`` and the checkpoint settings are left out, so a finished run can be extended.
    A run may resume with another number of processes as long as the global batch
    (``batch_size × world size``) is the same: it sees the same trajectories in the same steps.
    """
    options = distiller.options.to_dict()
    for key in ("iterations", "checkpoint_every", "keep_checkpoints", "batch_size"):
        options.pop(key)
    return {
        "teacher": distiller.teacher.describe(),
        "conversion": distiller.conversion.to_dict(),
        "options": options,
        "global_batch": distiller.global_batch,
    }


def run_distillation(
    distiller: Distiller, *, phi_path: str | os.PathLike[str] | None = None
) -> DistillResult:
    """Train (resuming if the run folder has a checkpoint), evaluate on held-out trajectories, then —
    on rank 0 — write the report JSON, the loss-curve PNG (into the run folder) and the φ file."""
    distiller.train()
    evaluation = distiller.evaluate()
    report = distiller.report(evaluation)
    curves = distiller.curves()
    written = None
    if distiller.ctx.is_main:
        if distiller.run is not None:
            distiller.run.write_json("report.json", _finite(report))
            distiller.run.write_bytes(
                "loss_curve.png", loss_curve_png_bytes(curves, ylabel=f"{distiller.options.loss} loss")
            )
        if phi_path is not None:
            written = distiller.save_phi(phi_path, report)
    distiller.ctx.barrier()
    return DistillResult(
        distiller.hybrid, report, curves, written, distiller.run.path if distiller.run else None
    )


def _finite(value: Any) -> Any:
    """``value`` with NaN / inf replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
