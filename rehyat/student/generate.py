"""One way to generate a clip of the embedded models, shared by the CLI, the demo and the library.

``generate_video("teacher" | "rehyat", prompt, seed, frames)`` returns uint8 RGB frames
``(F, H, W, 3)``. Both models start from the same noise for a seed (:meth:`Teacher.initial_noise`),
so their clips can be compared frame by frame. ``"rehyat"`` is the shipped ReHyAt student (the
teacher converted with the stage-1 φ, every block causal, plus the stage-2 LoRA; see
:mod:`rehyat.student`) and ``"rehyat-stage1"`` the same conversion without stage 2; both run
recurrently: chunk after chunk, constant memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from ..config import require_int
from ..teacher.model import ASSETS, SamplingConfig, Teacher, load_teacher
from .files import load_student

MODELS: tuple[str, ...] = ("teacher", "rehyat", "rehyat-stage1")
PHI_FILE = "teacher_phi.safetensors"  # the shipped stage-1 φ, next to the teacher's files
MAX_FRAMES = 1024  # one latent frame per video frame; the recurrent form's memory does not grow


def check_frames(frames: object) -> int:
    """``frames`` as a valid clip length, or a ValueError naming the valid values."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise ValueError(
            f"frames must be an integer from 1 to {MAX_FRAMES} (the embedded teacher has no temporal "
            f"compression: every frame count is valid; it was trained on 16); got {frames!r}"
        )
    return frames


def load_model(model: str, folder: str | os.PathLike[str] | None = None) -> tuple[Teacher, Callable | None]:
    """The teacher and the velocity function of ``model`` (None: the teacher's own softmax DiT)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    teacher = load_teacher(folder)
    if model == "teacher":
        return teacher, None
    stage = "stage1" if model == "rehyat-stage1" else "student"
    return teacher, recurrent_velocity(rehyat_student(teacher, Path(folder) if folder else ASSETS, stage))


def rehyat_student(teacher: Teacher, folder: Path, stage: str = "student") -> Teacher:
    """A copy of ``teacher`` converted to ReHyAt from the student files in ``folder``.

    ``stage``: "student" (stage-1 φ + stage-2 LoRA) or "stage1" (φ only); see
    :func:`rehyat.student.load_student`.
    """
    return load_student(teacher, folder, stage)


def recurrent_velocity(student: Teacher) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The converted DiT's recurrent forward as a velocity function ``(x, t, context) → v``."""
    from ..models.wan_rehyat import forward_recurrent

    return lambda x, t, context: forward_recurrent(student.dit, x, t, context)


def to_uint8_frames(pixels: Tensor) -> Tensor:
    """``(3, F, H, W)`` in [-1, 1] → uint8 ``(F, H, W, 3)``."""
    return (
        ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()
    )


def generate_video(
    model: str,
    prompt: str,
    seed: int,
    frames: int,
    *,
    folder: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Generate ``frames`` RGB frames ``(F, H, W, 3)`` uint8 of ``prompt`` with ``model``.

    Args:
        model: ``"teacher"`` (softmax over every frame), ``"rehyat"`` (the shipped two-stage student,
            recurrent) or ``"rehyat-stage1"`` (stage-1 φ only, recurrent).
        prompt: words of the teacher's grammar (see :func:`rehyat.teacher.text.parse_prompt`).
        seed: noise seed (the same noise for both models).
        frames: clip length (:func:`check_frames`).
        folder: teacher files (default: the package's).
        steps: denoising steps (default: the teacher's).
        callback: ``callback(step, x)`` after every denoising step.
    """
    check_frames(frames)
    require_int("seed", seed, low=0)
    teacher, velocity = load_model(model, folder)
    teacher.encode([prompt])  # refuses a prompt outside the grammar before any work
    sampling = teacher.config.sampling
    if steps is not None:
        sampling = SamplingConfig(**{**asdict(sampling), "steps": steps})
    pixels = teacher.generate(prompt, frames, seed, velocity=velocity, sampling=sampling, callback=callback)
    return to_uint8_frames(pixels)
