"""ComfyUI specifics of the training nodes, in one place: everything the jobs of ``rehyat.training``
need from ComfyUI and nothing else.

Run folders under ``<ComfyUI output>/rehyat_runs``, inference mode off, the progress bar and the
Cancel button as :class:`~rehyat.training.job.TrainingHooks`, the loss curve as an IMAGE; for
distillation the prompts as CONDITIONINGs and the teacher sampled by ComfyUI's own samplers; for the
fine-tune the working clone it trains (:class:`FinetuneWorkspace`: the incoming MODEL is never
changed) and the MODEL it returns. No nodes here (no ``NODES``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..rehyat.integrations.comfyui_capture import ComfyWanTeacher
from ..rehyat.integrations.comfyui_wan import ComfyReHyAtPatch, patch_comfy_wan, unpatched_clone
from ..rehyat.training.finetune import FinetuneConfig, select_for_config
from ..rehyat.training.job import TrainingHooks
from ..rehyat.training.lora import detach_lora
from ..rehyat.training.plots import loss_curve_image
from ..rehyat.training.runs import tensors_digest
from .patching import model_fingerprint

RUNS_FOLDER = "rehyat_runs"
"""Run folders live in ``<ComfyUI output>/rehyat_runs/<run_name>/`` (not under models/, so their
checkpoints never appear in φ-file lists)."""


def runs_root() -> str:
    """``<ComfyUI output directory>/rehyat_runs``."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUNS_FOLDER)


def autograd_enabled() -> contextlib.AbstractContextManager:
    """Leave inference mode: ComfyUI runs nodes in inference mode, training needs autograd."""
    return torch.inference_mode(False)


def progress_callback(total: int) -> Callable[[int, int, float], None]:
    """A ``(step, total_steps, loss)`` callback that drives a ComfyUI progress bar of ``total`` steps."""
    import comfy.utils

    pbar = comfy.utils.ProgressBar(total)
    return lambda step, total_steps, loss: pbar.update_absolute(step, total_steps)


def should_stop() -> bool:
    """True once the user pressed Cancel (ComfyUI's interrupt flag)."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def training_hooks(total: int) -> TrainingHooks:
    """ComfyUI's progress bar (``total`` steps) and Cancel button as a job's hooks."""
    return TrainingHooks(on_step=progress_callback(total), should_stop=should_stop)


def interrupted() -> Exception:
    """The exception that tells ComfyUI a node stopped on Cancel (raise it)."""
    import comfy.model_management

    return comfy.model_management.InterruptProcessingException()


def loss_curve_tensor(curves: Mapping[str, Sequence[float]], **kwargs) -> torch.Tensor:
    """The loss-curve picture as a ComfyUI ``IMAGE``: ``(1, H, W, 3)`` float in [0, 1]."""
    return torch.from_numpy(loss_curve_image(curves, **kwargs)).float().div(255.0)[None]  # (1, H, W, 3)


def compute_device() -> torch.device:
    """The device ComfyUI computes on."""
    import comfy.model_management

    return comfy.model_management.get_torch_device()


# --- distillation ---------------------------------------------------------------------------------


def distill_conditionings(clip, prompts: str, negative_prompt: str, positive, negative) -> tuple[list, list]:
    """Training CONDITIONINGs (one per prompt line, then ``positive``) and the negative one."""
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if lines and clip is None:
        raise ValueError(
            "clip: connect the umT5 text encoder (CLIP input) to encode 'prompts', "
            "or clear 'prompts' and connect a 'positive' conditioning"
        )
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(line)) for line in lines]
    if positive is not None:
        conds.append(positive)
    if not conds:
        raise ValueError(
            "prompts: the prompt list is empty — write at least one prompt (one per line) "
            "or connect a 'positive' conditioning"
        )
    if negative is not None:
        neg = negative
    elif clip is not None:
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(negative_prompt))
    else:
        raise ValueError("negative: connect a 'negative' conditioning, or a CLIP to encode 'negative_prompt'")
    return conds, neg


def comfy_teacher(
    model: Any, conditionings: list, negative: list, latent_shape: tuple[int, ...], *, steps: int, cfg: float,
    sampler_name: str, scheduler: str, capture_stride: int,
) -> ComfyWanTeacher:
    """The ComfyUI model as a distillation teacher, sampled by ``comfy.sample.sample``."""
    sample_fn = _sampler(conditionings, negative, latent_shape, steps, cfg, sampler_name, scheduler)
    digest = tensors_digest([c[0][0] for c in conditionings] + [negative[0][0]])
    return ComfyWanTeacher(
        model,
        sample_fn,
        latent_shape,
        steps,
        capture_stride,
        describe_extra={
            "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler, "conditioning_sha256": digest
        },
        fingerprint=model_fingerprint(model),
    )


def _sampler(conditionings, negative, latent_shape, steps, cfg, sampler_name, scheduler):
    """A ``sample_fn`` for :class:`ComfyWanTeacher`: one trajectory through ``comfy.sample.sample``."""
    import comfy.sample

    def sample(patcher, trajectory, on_step):
        latent = torch.zeros((1, *latent_shape), dtype=torch.float32)
        noise = comfy.sample.prepare_noise(latent, trajectory.seed)
        return comfy.sample.sample(
            patcher,
            noise,
            steps,
            cfg,
            sampler_name,
            scheduler,
            conditionings[trajectory.conditioning],
            negative,
            latent,
            denoise=1.0,
            callback=lambda step, x0, x, total: on_step(step),
            disable_pbar=True,
            seed=trajectory.seed,
        )

    return sample


# --- fine-tune ------------------------------------------------------------------------------------


class FinetuneWorkspace:
    """A working clone of a ReHyAt-patched MODEL to train on, for the length of a ``with`` block.

    On entry: φ are copied (the input's stay untouched), the clone is patched with them and loaded
    fully on the compute device, inference tensors are made trainable and the config's trainable set
    is selected (weights trained in place are remembered). On exit: LoRA adapters are removed, the
    remembered weights restored and the clone unloaded, so the shared model is as before.

    Attributes (inside the block): ``work`` (the clone), ``wan`` (its diffusion model), ``model_fn``,
    ``device``, ``hybrid`` (the φ being trained) and ``trainable``.
    """

    def __init__(self, model: Any, patch: ComfyReHyAtPatch, config: FinetuneConfig):
        self.model, self.patch, self.config = model, patch, config

    def __enter__(self) -> FinetuneWorkspace:
        import comfy.model_management

        self.hybrid = {i: copy.deepcopy(m) for i, m in self.patch.hybrid.items()}
        self.work = patch_comfy_wan(unpatched_clone(self.model), self.patch.config, self.hybrid)
        comfy.model_management.load_models_gpu([self.work], force_full_load=True)
        self.wan = self.work.model.diffusion_model
        _autograd_ready(self.wan)
        options = {"wrappers": self.work.wrappers}
        wan = self.wan
        self.model_fn = lambda x, t, context: wan(x, t, context, transformer_options=dict(options))
        self.device = next(wan.parameters()).device
        self.trainable = select_for_config(wan, self.config)
        self.originals = {
            n: p.detach().clone()
            for n, p in self.trainable.parameters.items()
            if ".hybrid." not in n and ".lora." not in n
        }
        return self

    def __exit__(self, *exc: object) -> None:
        detach_lora(self.wan)
        with torch.no_grad():  # the shared model gets its own weights back
            for name, value in self.originals.items():
                self.trainable.parameters[name].data.copy_(value)
        _unload(self.work)

    def lora_model(self, lora_sd: Mapping[str, torch.Tensor]) -> Any:
        """The returned MODEL for a LoRA: the clone with the LoRA loaded the stock way."""
        import comfy.sd

        return comfy.sd.load_lora_for_models(self.work, None, lora_sd, 1.0, 0)[0]

    def full_model(self, full_sd: Mapping[str, torch.Tensor]) -> Any:
        """The returned MODEL for trained weights: the clone with "set" patches of the trained ones."""
        out = self.work.clone()
        out.add_patches({f"diffusion_model.{n}": ("set", (full_sd[n],)) for n in self.originals}, 1.0)
        return out


def output_folder(kind: str) -> str:
    """ComfyUI's first folder of ``kind`` ("loras", "diffusion_models")."""
    import folder_paths

    return folder_paths.get_folder_paths(kind)[0]


def _unload(patcher) -> None:
    """Unload the training clone (weight and object patches removed) so the next user loads cleanly."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)


def _autograd_ready(module: torch.nn.Module) -> None:
    """Replace inference tensors (weights loaded while ComfyUI ran a node in inference mode) by normal ones.

    Autograd cannot save an inference tensor for backward, and a frozen weight is saved whenever
    the gradient flows through its layer.
    """
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.is_inference():  # a new Parameter: an inference one has no version counter
                setattr(
                    sub, name, torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                )
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None and buf.is_inference():
                sub._buffers[name] = buf.clone()
