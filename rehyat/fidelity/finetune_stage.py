"""Stage 2 for the fidelity table's "distillation + fine-tune" case, on the embedded teacher.

The distilled student is fine-tuned with the project's flow-matching trainer
(:func:`rehyat.training.finetune.finetune`, every weight trainable as in the paper) on clips the
teacher generated for the distillation prompts — the teacher's own output distribution, since the
table scores fidelity to the teacher. The clips are kept in a dataset folder and reused by a resumed run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..teacher.model import SamplingConfig, Teacher, pixels_to_latent
from ..training.dataset import LatentDataset
from ..training.finetune import FinetuneConfig, finetune
from ..training.flow_matching import FlowMatchingConfig

FINETUNE_SEED = 200_000  # first noise seed of the fine-tuning clips (apart from distillation and evaluation)


def teacher_dataset(
    teacher: Teacher, folder: Path, prompts: list[str], samples: int, sampling: SamplingConfig
) -> LatentDataset:
    """``samples`` teacher-generated latents at the training length, prompts cycled (built once)."""
    dataset = LatentDataset(
        folder, model={"name": "rehyat embedded teacher", "in_dim": teacher.config.dit.in_dim}
    )
    frames = teacher.config.clip.frames
    for index in range(len(dataset), samples):
        prompt, seed = prompts[index % len(prompts)], FINETUNE_SEED + index
        pixels = teacher.generate(prompt, frames, seed, sampling=sampling)
        latent = pixels_to_latent(pixels[None], teacher.config.fold)[0]  # (C, T, H, W)
        context = teacher.encode([prompt])[0]  # (L, D)
        dataset.append(
            latent, context, {"source": "teacher", "prompt": prompt, "seed": seed, "steps": sampling.steps}
        )
    return dataset


def finetune_on_teacher(
    teacher: Teacher,
    student: Teacher,
    folder: Path,
    prompts: list[str],
    config: Any,
    sampling: SamplingConfig,
) -> dict[str, Any]:
    """Fine-tune ``student.dit`` (converted, φ distilled) in place; returns the loss curve and settings.

    ``config`` is the :class:`~rehyat.fidelity.run.FidelityConfig` (finetune_steps, finetune_samples,
    finetune_lr).
    """
    dataset = teacher_dataset(teacher, folder, prompts, config.finetune_samples, sampling)
    settings = FinetuneConfig(
        trainable="everything",
        steps=config.finetune_steps,
        batch_size=4,
        micro_batch=4,
        learning_rate=config.finetune_lr,
        warmup_steps=min(10, config.finetune_steps // 5),
        checkpoint_every=config.finetune_steps,
        flow=FlowMatchingConfig(shift=sampling.shift),
    )
    dit = student.dit
    result = finetune(dit, lambda x, t, context: dit(x, t, context), dataset, settings)
    dit.eval()
    return {
        "settings": settings.to_dict(),
        "samples": len(dataset),
        "first_losses": result.losses[:5],
        "last_losses": result.losses[-5:],
        "seconds": result.seconds,
    }
