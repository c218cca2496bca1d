"""Training recipe of the embedded teacher: flow matching from scratch on procedural clips.

Everything a step uses is a function of (seed, step): the clips are
``generate_clip(data_seed + step·batch + i)``, the prompt dropout (for classifier-free guidance),
the noise and the noise levels come from generators seeded with the step. So a run resumed from
any checkpoint continues exactly as an uninterrupted run would, and the first losses of a fresh run
reproduce the shipped training log on the same software.

The trainer trains the DiT and the text encoder jointly with AdamW (linear warm-up, then constant
learning rate, cosine decay over the last ``decay_steps``), clips gradients, and keeps an
exponential moving average (EMA) of both; the EMA weights are what ships. Checkpoints go to a
:class:`rehyat.training.runs.RunFolder` (atomic, resumable); :func:`export_teacher` writes the
teacher files from the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import require_int, require_real
from ..training.flow_matching import FlowMatchingConfig, flow_matching_loss
from ..training.runs import RunFolder
from .model import Teacher, TeacherConfig, pixels_to_latent
from .shapes import clip_batch

LOG_FILE = "training_log.json"
RECIPE = "rehyat.teacher.train v2"


@dataclass(frozen=True)
class TrainConfig:
    """The teacher's training schedule (defaults: the shipped run).

    Attributes:
        steps: optimiser steps of the full schedule.
        batch: clips per step.
        learning_rate: peak AdamW learning rate.
        warmup_steps: linear warm-up from 0.
        decay_steps: cosine decay to 10 % over the last steps of the schedule.
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clip.
        ema_decay: decay of the weight average that ships.
        prompt_dropout: probability that a clip's prompt is replaced by "" (teaches the
            unconditional prediction CFG needs).
        seed: model initialisation, noise and σ.
        data_seed: first clip seed.
        shift: flow-matching timestep shift of the drawn σ.
        foreground_weight: extra loss weight on the pixels a shape covers (grown by one pixel):
            each element weighs ``1 + foreground_weight`` there and 1 on the black background,
            so the few pixels that carry the prompt (about a tenth of a clip) are not drowned by
            the easy background. 0 turns it off.
        checkpoint_every: steps between checkpoints.
    """

    steps: int = 8000
    batch: int = 8
    learning_rate: float = 6e-4
    warmup_steps: int = 200
    decay_steps: int = 3200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    seed: int = 0
    data_seed: int = 1_000_000
    shift: float = 3.0
    foreground_weight: float = 4.0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            require_int(name, getattr(self, name), low=1)
        for name in ("warmup_steps", "decay_steps", "seed", "data_seed"):
            require_int(name, getattr(self, name), low=0)
        require_real("learning_rate", self.learning_rate, low=0.0, high=1.0)
        require_real("weight_decay", self.weight_decay, low=0.0, high=1.0)
        require_real("grad_clip", self.grad_clip, low=0.0, high=1e6)
        require_real("ema_decay", self.ema_decay, low=0.0, high=1.0)
        require_real("prompt_dropout", self.prompt_dropout, low=0.0, high=1.0)
        require_real("shift", self.shift, low=0.01, high=100.0)
        require_real("foreground_weight", self.foreground_weight, low=0.0, high=1000.0)

    def learning_rate_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        decay_start = self.steps - self.decay_steps
        if step < decay_start or self.decay_steps == 0:
            return self.learning_rate
        progress = (step - decay_start) / self.decay_steps
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def step_pixels(teacher_config: TeacherConfig, train: TrainConfig, step: int) -> tuple[Tensor, list[str]]:
    """The pixels ``(B, 3, T, H, W)`` and prompts (after dropout) of training step ``step``."""
    seeds = [train.data_seed + step * train.batch + i for i in range(train.batch)]
    pixels, prompts = clip_batch(seeds, teacher_config.clip)
    drop = random.Random(train.seed * 1_000_003 + step)
    prompts = ["" if drop.random() < train.prompt_dropout else p for p in prompts]
    return pixels, prompts


def step_batch(teacher_config: TeacherConfig, train: TrainConfig, step: int) -> tuple[Tensor, list[str]]:
    """The latents ``(B, C, T, h, w)`` and prompts (after dropout) of training step ``step``."""
    pixels, prompts = step_pixels(teacher_config, train, step)
    return pixels_to_latent(pixels, teacher_config.fold), prompts


def content_weight(pixels: Tensor, foreground_weight: float, fold: int) -> Tensor:
    """Loss weights in latent layout ``(B, 3·fold², T, h, w)``: ``1 + foreground_weight`` on shapes.

    A pixel is foreground when any channel is brighter than the black background (−1), grown by
    one pixel so a shape's edge — what tells a circle from a square — counts as foreground.
    """
    b, _, t, h, w = pixels.shape
    lit = (pixels > -0.9).any(dim=1).float()  # (B, T, H, W)
    grown = F.max_pool2d(lit.reshape(b * t, 1, h, w), 3, stride=1, padding=1).reshape(b, 1, t, h, w)
    weight = 1.0 + foreground_weight * grown.expand(b, 3, t, h, w)  # (B, 3, T, H, W)
    return pixels_to_latent(weight, fold)


def step_loss(teacher: Teacher, teacher_config: TeacherConfig, train: TrainConfig, step: int) -> Tensor:
    """The flow-matching loss of training step ``step`` (deterministic given the weights)."""
    pixels, prompts = step_pixels(teacher_config, train, step)
    latent = pixels_to_latent(pixels, teacher_config.fold)
    weight = (
        content_weight(pixels, train.foreground_weight, teacher_config.fold)
        if train.foreground_weight > 0
        else None
    )
    generator = torch.Generator().manual_seed(train.seed * 7_919 + step)
    context = teacher.encode(prompts)
    return flow_matching_loss(
        teacher.dit,
        latent,
        context,
        generator=generator,
        config=FlowMatchingConfig(shift=train.shift, sampling="logit_normal"),
        weight=weight,
    )


def new_teacher(teacher_config: TeacherConfig, train: TrainConfig) -> Teacher:
    """A freshly initialised teacher (deterministic given ``train.seed``)."""
    torch.manual_seed(train.seed)
    return Teacher(teacher_config)


def train_teacher(
    run_root: str | Path,
    run_name: str,
    *,
    teacher_config: TeacherConfig | None = None,
    train: TrainConfig | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) the teacher in ``<run_root>/<run_name>``; returns a summary.

    Args:
        run_root, run_name: the run folder (resumes from its latest checkpoint; a folder of another
            config is refused).
        teacher_config, train: architecture/data and schedule (defaults: the shipped recipe).
        max_steps: stop after this many steps of this call (the schedule is unchanged).
        max_seconds: stop (after a checkpoint) once this much wall time has passed in this call.
        log: where progress lines go.
    """
    teacher_config = teacher_config or TeacherConfig()
    train = train or TrainConfig()
    run = RunFolder(
        run_root,
        run_name,
        {"teacher": teacher_config.to_dict(), "train": train.to_dict(), "recipe": RECIPE},
    )
    teacher = new_teacher(teacher_config, train)
    ema = Teacher(teacher_config)
    ema.load_state_dict(teacher.state_dict())
    optimizer = torch.optim.AdamW(
        teacher.parameters(), lr=train.learning_rate, betas=(0.9, 0.99), weight_decay=train.weight_decay
    )
    history: list[list[float]] = []
    elapsed_before, start_step = 0.0, 0
    checkpoint = run.load_latest()
    if checkpoint is not None:
        teacher.load_state_dict(
            {k[len("model/") :]: v for k, v in checkpoint.tensors.items() if k.startswith("model/")}
        )
        ema.load_state_dict(
            {k[len("ema/") :]: v for k, v in checkpoint.tensors.items() if k.startswith("ema/")}
        )
        optimizer.load_state_dict(checkpoint.optimizer_state["adamw"])
        history = [list(entry) for entry in checkpoint.extra["history"]]
        elapsed_before = float(checkpoint.extra["seconds"])
        start_step = checkpoint.step
        log(f"resumed {run.path} at step {start_step}")
    teacher.train()
    started = time.perf_counter()
    end = train.steps if max_steps is None else min(train.steps, start_step + max_steps)
    step = start_step
    while step < end:
        lr = train.learning_rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_loss(teacher, teacher_config, train, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(teacher.parameters(), train.grad_clip)
        optimizer.step()
        _update_ema(ema, teacher, min(train.ema_decay, (1 + step) / (10 + step)))
        step += 1
        seconds = elapsed_before + time.perf_counter() - started
        history.append([step, loss.item(), grad_norm.item(), lr, round(seconds, 2)])
        if step % 10 == 0 or step == end:
            recent = [h[1] for h in history[-10:]]
            log(
                f"step {step}/{train.steps}  loss {sum(recent) / len(recent):.4f}  lr {lr:.2e}  "
                f"{seconds / 60:.1f} min"
            )
        timed_out = max_seconds is not None and time.perf_counter() - started > max_seconds
        if step % train.checkpoint_every == 0 or step == end or timed_out:
            _save(run, step, teacher, ema, optimizer, history, seconds)
        if timed_out:
            break
    return {
        "run": str(run.path),
        "step": step,
        "steps": train.steps,
        "loss_last_50": _mean([h[1] for h in history[-50:]]),
        "seconds": history[-1][4] if history else 0.0,
    }


def export_teacher(
    run_root: str | Path,
    run_name: str,
    output: str | Path,
    *,
    teacher_config: TeacherConfig | None = None,
    train: TrainConfig | None = None,
    command: str | None = None,
) -> Path:
    """Write the EMA teacher of the run's latest checkpoint and its training log into ``output``.

    ``command`` (the command line that reproduces the run) is recorded in ``teacher.json``.
    """
    teacher_config = teacher_config or TeacherConfig()
    train = train or TrainConfig()
    run = RunFolder(
        run_root,
        run_name,
        {"teacher": teacher_config.to_dict(), "train": train.to_dict(), "recipe": RECIPE},
        create=False,
    )
    checkpoint = run.load_latest()
    if checkpoint is None:
        raise ValueError(f"run {run.path} has no checkpoint yet: train first")
    teacher = Teacher(teacher_config)
    teacher.load_state_dict(
        {k[len("ema/") :]: v for k, v in checkpoint.tensors.items() if k.startswith("ema/")}
    )
    history = checkpoint.extra["history"]
    training = {
        "recipe": "python -m rehyat train-teacher (rehyat/teacher/train.py)",
        "command": command,
        "threads": checkpoint.extra.get("threads"),
        "train_config": train.to_dict(),
        "steps_done": checkpoint.step,
        "steps_scheduled": train.steps,
        "clips_seen": checkpoint.step * train.batch,
        "cpu_seconds_wall": float(checkpoint.extra["seconds"]),
        "final_loss_mean_last_100": _mean([h[1] for h in history[-100:]]),
        "weights": "EMA",
        "torch": torch.__version__,
    }
    output = Path(output)
    teacher.save(output, training)
    log = {
        "columns": ["step", "loss", "grad_norm", "learning_rate", "seconds"],
        "history": history,
        "training": training,
    }
    tmp = output / (LOG_FILE + ".tmp")
    tmp.write_text(json.dumps(log) + "\n", encoding="utf-8")
    tmp.replace(output / LOG_FILE)
    return output


def _save(run: RunFolder, step: int, teacher: Teacher, ema: Teacher, optimizer, history, seconds) -> None:
    tensors = {f"model/{k}": v for k, v in teacher.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    run.save_checkpoint(
        step,
        tensors,
        {"adamw": optimizer.state_dict()},
        {"history": history, "seconds": seconds, "threads": torch.get_num_threads()},
        rng=False,
    )


@torch.no_grad()
def _update_ema(ema: Teacher, model: Teacher, decay: float) -> None:
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - decay)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
