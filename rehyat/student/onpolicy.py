"""Stage 2 on the student's own sampling trajectories (``StudentRecipe.stage2_data="trajectories"``).

The clip-based stage 2 noises generator clips and regresses the softmax teacher's velocity there —
states a sampler of the *teacher* would visit. At 4× length a chunk-causal student drifts off those
states: a chunk's layout is decided early, and at a chunk boundary it may be placed anew. Here the
inputs are the states the **student itself** visits (on-policy): a buffer of its classifier-free
guided Euler trajectories (the teacher's sampling settings) on generator prompts, refreshed with the
current adapters every ``stage2_trajectory_refresh`` steps; each step regresses the teacher's
velocity at ``stage2_batch`` states drawn from it, so the student learns how the teacher would carry
on from where the student actually is. Loss weights: the shape-covering pixels of the teacher's
clean estimate ``x − σ·v`` weigh ``1 + stage2_foreground_weight``. Only the LoRA adapters train.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..teacher.model import Teacher, latent_to_pixels
from ..teacher.shapes import generate_clip
from ..teacher.train import content_weight
from ..training.flow_matching import sampling_sigmas, sigma_to_timestep
from ..training.lora import load_comfy_lora_adapters
from ..training.runs import Checkpoint, RunFolder
from .losses import boundary_step_loss, weighted_mse
from .recipe import STAGE2_FIRST_SEED, StudentRecipe

State = tuple[Tensor, float, str]  # (x at σ (1, C, T, h, w), σ, prompt)


@torch.no_grad()
def student_trajectory(student: Teacher, prompt: str, seed: int, frames: int) -> list[State]:
    """The student's CFG Euler trajectory from the seed's noise: ``(x, σ, prompt)`` before every step."""
    sampling = student.config.sampling
    sigmas = sampling_sigmas(sampling.steps, sampling.shift)
    context = student.encode([prompt, ""])  # (2, L, D): prompt, empty prompt
    x = student.initial_noise(frames, seed)  # (1, C, T, h, w)
    states: list[State] = []
    for i in range(sampling.steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        states.append((x.clone(), float(sigma), prompt))
        t = sigma_to_timestep(sigma.expand(2))
        v_pos, v_neg = student.dit(x.repeat(2, 1, 1, 1, 1), t, context).chunk(2)
        x = x + float(sigma_next - sigma) * (v_neg + sampling.guidance * (v_pos - v_neg))
    return states


def run_stage2_on_trajectories(
    stage1: Teacher,
    teacher: Teacher,
    recipe: StudentRecipe,
    attach_lora: Callable[[torch.nn.Module, int], Any],
    progress: Callable[[str, int, int, float], None] | None = None,
    run: RunFolder | None = None,
    *,
    initial_lora: Mapping[str, Tensor] | None = None,
    first_prompt: int = 0,
    seam_weight: float = 0.0,
    label: str = "stage 2",
) -> tuple[Teacher, dict[str, Any]]:
    """Fine-tune a copy of ``stage1`` (LoRA from ``attach_lora``, φ frozen) on its own trajectories.

    ``initial_lora`` (ComfyUI-format tensors, :func:`rehyat.training.lora.comfy_lora_state_dict`)
    starts the adapters from a trained student instead of zero; ``first_prompt`` is the index of
    the first generator prompt (after the ones an earlier run used); ``seam_weight`` adds that many
    times :func:`~rehyat.student.losses.boundary_step_loss` to the loss; ``label`` names the stage in
    ``progress``.

    ``run``: a run folder; a checkpoint (adapters, optimizer, data order, losses) is written at every
    trajectory refresh and at the end, and a run folder that holds one is resumed from it — to the
    same numbers as an uninterrupted run, since the buffer is rebuilt from the same adapters. A
    finished run is extended when ``recipe.stage2_steps`` grows (the learning rate does not depend on
    the total); asking for fewer steps than it has is refused.
    """
    student = copy.deepcopy(stage1)
    dit = student.dit
    torch.manual_seed(recipe.stage2_seed)  # the adapters' initialisation
    trainable = attach_lora(dit, recipe.lora_rank)
    if initial_lora is not None:
        load_comfy_lora_adapters(dit, initial_lora)
    optimizer = torch.optim.AdamW(list(trainable.parameters.values()), lr=recipe.stage2_lr, weight_decay=0.0)
    rng = random.Random(recipe.stage2_seed)
    frames = recipe.stage2_frames or teacher.config.clip.frames
    fold = teacher.config.fold
    buffer: list[State] = []
    first, next_prompt, losses = 0, first_prompt, []
    if run is not None and (checkpoint := run.load_latest()) is not None:
        first, next_prompt, losses = _resume(checkpoint, trainable, optimizer, rng, recipe, run)
    for step in range(first, recipe.stage2_steps):
        if step % recipe.stage2_trajectory_refresh == 0:  # on-policy: states of the current adapters
            if run is not None and step > first:
                _save(run, step, trainable, optimizer, rng, next_prompt, losses)
            dit.eval()
            buffer = []
            for _ in range(recipe.stage2_trajectory_prompts):
                seed = STAGE2_FIRST_SEED + next_prompt
                prompt = generate_clip(seed, teacher.config.clip, frames=teacher.config.clip.frames).prompt
                buffer.extend(student_trajectory(student, prompt, seed, frames))
                next_prompt += 1
        picks = [buffer[rng.randrange(len(buffer))] for _ in range(recipe.stage2_batch)]
        x = torch.cat([p[0] for p in picks])  # (B, C, T, h, w)
        sigma = torch.tensor([p[1] for p in picks])
        every = recipe.empty_prompt_every
        prompts = ["" if every and rng.randrange(every) == 0 else p[2] for p in picks]
        context = teacher.encode(prompts)
        t = sigma_to_timestep(sigma)
        with torch.no_grad():
            target = teacher.dit(x, t, context)
            clean = x - sigma.view(-1, 1, 1, 1, 1) * target  # the teacher's x0 estimate
            weight = content_weight(latent_to_pixels(clean, fold).clamp(-1, 1),
                                    recipe.stage2_foreground_weight, fold)
        dit.train()
        for group in optimizer.param_groups:
            group["lr"] = recipe.stage2_lr * min(1.0, (step + 1) / max(recipe.stage2_warmup, 1))
        prediction = dit(x, t, context)
        error = prediction.float() - target.float()  # (B, C, T, h, w)
        loss = weighted_mse(error, weight)
        if seam_weight > 0:
            loss = loss + seam_weight * boundary_step_loss(error, weight, recipe.chunk_frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(label, step + 1, recipe.stage2_steps, losses[-1])
    if run is not None and recipe.stage2_steps > first:
        _save(run, recipe.stage2_steps, trainable, optimizer, rng, next_prompt, losses)
    dit.eval().requires_grad_(False)
    report = {
        "trainable": "LoRA on every block linear (φ frozen at stage 1)",
        "target": "the softmax teacher's velocity at the student's own sampling states",
        "data": f"the student's CFG Euler trajectories ({student.config.sampling.steps} steps) on "
        f"{recipe.stage2_trajectory_prompts} generator prompts from seed {STAGE2_FIRST_SEED}, refreshed "
        f"every {recipe.stage2_trajectory_refresh} steps",
        "foreground_weight": recipe.stage2_foreground_weight,
        "seam_weight": seam_weight,
        "started_from": "a trained student's LoRA" if initial_lora is not None else "zero adapters",
        "trained_parameters": trainable.count,
        "first_prompt": first_prompt,
        "prompts": next_prompt,
        "first_losses": losses[:5],
        "last_losses": losses[-5:],
        "loss_curve": losses,
    }
    return student.eval(), report


def _save(run: RunFolder, step: int, trainable: Any, optimizer: torch.optim.Optimizer, rng: random.Random,
          next_prompt: int, losses: list[float]) -> None:
    """Checkpoint the adapters, the optimizer and the data order at ``step`` (a refresh or the end)."""
    version, state, gauss = rng.getstate()
    extra = {"next_prompt": next_prompt, "losses": losses, "rng": [version, list(state), gauss]}
    run.save_checkpoint(step, dict(trainable.parameters), optimizer.state_dict(), extra)


def _resume(checkpoint: Checkpoint, trainable: Any, optimizer: torch.optim.Optimizer, rng: random.Random,
            recipe: StudentRecipe, run: RunFolder) -> tuple[int, int, list[float]]:
    """Put a checkpoint back; returns (its step, the next prompt index, the losses so far)."""
    if checkpoint.step > recipe.stage2_steps:
        raise ValueError(
            f"run folder {run.path} already holds {checkpoint.step} stage-2 steps; stage2_steps is "
            f"{recipe.stage2_steps} — ask for at least {checkpoint.step} or choose another run folder"
        )
    if checkpoint.step % recipe.stage2_trajectory_refresh and checkpoint.step < recipe.stage2_steps:
        raise ValueError(
            f"run folder {run.path}: its last checkpoint (step {checkpoint.step}) is not at a trajectory "
            f"refresh (every {recipe.stage2_trajectory_refresh} steps), so it cannot be extended exactly; "
            "delete the folder to start over"
        )
    with torch.no_grad():
        for name, param in trainable.parameters.items():
            param.copy_(checkpoint.tensors[name])
    optimizer.load_state_dict(checkpoint.optimizer_state)
    checkpoint.restore_rng()
    version, state, gauss = checkpoint.extra["rng"]
    rng.setstate((version, tuple(state), gauss))
    return checkpoint.step, int(checkpoint.extra["next_prompt"]), list(checkpoint.extra["losses"])


__all__ = ["run_stage2_on_trajectories", "student_trajectory"]
