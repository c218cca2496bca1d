"""Stage-1 φ distillation on the embedded teacher (used by the demo and the fidelity table).

The teacher is sampled on generator prompts at its training length; every denoising step's
forward is captured and each converted block's φ learns to match its softmax output
(:class:`rehyat.training.distill.Distiller`, the same code as the real-model distillation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..config import ConversionConfig, require_int
from ..hybrid import HybridAttention
from ..training.runs import RunFolder
from .model import SamplingConfig, Teacher
from .shapes import generate_clip


def scene_key(prompt: str) -> tuple[frozenset[str], str]:
    """A prompt's scene regardless of word order: (its "a <colour> <shape>" phrases, its verb).

    "a red circle and a blue square bounce" and "a blue square and a red circle bounce" are one scene.
    """
    words = prompt.lower().split()
    verb = words[-1] if words else ""
    shapes = " ".join(words[:-1]).split(" and ")
    return frozenset(s.strip() for s in shapes if s.strip()), verb


def generator_prompts(count: int, first_seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct prompts of the clip generator, from seeds ``first_seed, first_seed+1, …``.

    Prompts are read from each seed's first frame (so they say "bounce", never "collide", which needs
    the whole clip). A prompt whose scene (:func:`scene_key`) is that of a prompt in ``exclude`` is
    skipped: held-out evaluation prompts never show a scene seen in distillation.
    """
    require_int("count", count, low=1, high=10_000)
    excluded = {scene_key(p) for p in exclude}
    prompts: list[str] = []
    seed = first_seed
    while len(prompts) < count:
        if seed - first_seed > 100_000:
            raise ValueError(f"the generator has fewer than {count} distinct prompts outside those excluded")
        prompt = generate_clip(seed, frames=1).prompt
        if prompt not in prompts and scene_key(prompt) not in excluded:
            prompts.append(prompt)
        seed += 1
    return prompts


def distil_on_teacher(
    teacher: Teacher,
    conversion: ConversionConfig,
    *,
    steps: int,
    prompts: list[str],
    sampling: SamplingConfig,
    trajectory_steps: int = 10,
    lr: float = 1e-3,
    phi_seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
    run: RunFolder | None = None,
) -> tuple[dict[int, HybridAttention], dict[str, Any]]:
    """Distil φ of ``conversion``'s blocks against the teacher; returns (φ per block, report).

    Args:
        teacher: the softmax teacher (unchanged).
        conversion: blocks, Tc, To, causal, φ shape and attention variant.
        steps: optimiser steps (one per captured teacher forward).
        prompts: generator prompts the teacher is sampled on (the last one is held out for the
            report's evaluation).
        sampling: the teacher's guidance and shift (trajectories use ``trajectory_steps`` Euler steps).
        trajectory_steps: denoising steps of each captured teacher trajectory.
        lr: AdamW learning rate (the paper's 1e-3).
        phi_seed: seed of φ's initialisation.
        on_step: ``on_step(step, total, loss)`` after every step (progress bars).
        run: a run folder: checkpoints every 50 steps and at the end; a run interrupted before is
            resumed from its last checkpoint (None: no checkpoints).
    """
    from ..training.distill import Distiller
    from ..training.options import DistillOptions, TeacherSampling
    from ..training.wandit_teacher import WanDiTTeacher

    require_int("steps", steps, low=1)
    if len(prompts) < 2:
        raise ValueError(f"prompts must hold at least 2 prompts (one is held out); got {len(prompts)}")
    with torch.no_grad():
        features = teacher.encode(list(prompts) + [""])
    config = teacher.config
    latent_shape = (config.dit.in_dim, config.clip.frames, config.latent_size, config.latent_size)
    teacher_sampling = TeacherSampling(
        steps=trajectory_steps, cfg=sampling.guidance, shift=sampling.shift, eta=0.0, capture_stride=1
    )
    wrapped = WanDiTTeacher(teacher.dit, list(features[:-1]), features[-1], latent_shape, teacher_sampling)
    options = DistillOptions(iterations=steps, lr=lr, holdout_prompts=1, eval_seeds=1, phi_seed=phi_seed)
    distiller = Distiller(wrapped, conversion, options, len(prompts), on_step=on_step, run=run)
    distiller.train()
    report = distiller.report(distiller.evaluate())
    report["prompts"] = list(prompts)
    return dict(distiller.hybrid), report
