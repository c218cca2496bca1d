"""Node: stage-2 flow-matching fine-tune of a ReHyAt-patched Wan2.1 MODEL (LoRA or full, resumable).

The incoming MODEL is never changed: φ are trained on copies, LoRA adapters are removed after
training, and weights trained in place ("full" sets) are restored; the output MODEL carries the
result as ComfyUI patches (the LoRA loaded the stock way, or "set" weight patches).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import torch
from comfy_api.latest import io

from ..rehyat.atomic import atomic_save_file, create_file_group
from ..rehyat.integrations.comfyui_wan import (
    ATTACHMENT_KEY,
    DIFFUSION_MODEL_WRAPPER,
    WRAPPER_KEY,
    comfy_base_info,
    comfy_patch_info,
    patch_comfy_wan,
)
from ..rehyat.training.dataset import LatentDataset
from ..rehyat.training.export import base_state_dict
from ..rehyat.training.finetune import FinetuneConfig, evaluation_loss, finetune, select_for_config
from ..rehyat.training.flow_matching import DEFAULT_TRAIN_SHIFT, FlowMatchingConfig
from ..rehyat.training.lora import comfy_lora_state_dict, detach_lora
from ..rehyat.training.runs import RunFolder, validate_run_name
from ..rehyat.training.trainable import TRAINABLE_SETS
from ..rehyat.weights import fingerprint_module, save_phi_weights
from .dataset import dataset_path
from .folders import register_rehyat_folder
from .patch import model_fingerprint
from .training_common import (
    autograd_enabled,
    checkpoint_every_input,
    interrupted,
    loss_curve_output,
    loss_curve_tensor,
    progress_callback,
    run_name_input,
    runs_root,
    seed_input,
    should_stop,
)

_DEFAULTS = FinetuneConfig()
OUTPUTS = ("lora", "full")


class ReHyAtFinetune(io.ComfyNode):
    """Fine-tune a ReHyAt-patched Wan2.1 with Wan's flow-matching objective (paper §3.4.2)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Patched model, dataset, run and optimisation settings → fine-tuned MODEL, loss curve, report."""
        return io.Schema(
            node_id="ReHyAtFinetune",
            display_name="ReHyAt Finetune (flow matching)",
            category="ReHyAt/training",
            is_experimental=True,
            description=(
                "Stage 2 of ReHyAt training: after φ distillation, a short flow-matching fine-tune of the "
                "hybrid "
                "model on (video latent, prompt) samples restores quality, above all at chunk transitions. "
                "Trains LoRA adapters + φ (cheap), φ only, φ + self-attention, or everything (the paper: "
                "AdamW 1e-5, batch 16, 1,000 steps, bf16). Writes NEW files: the φ file (models/rehyat) and "
                "a "
                "LoRA (models/loras, load with LoraLoaderModelOnly) or a whole checkpoint "
                "(models/diffusion_models, load with Load Diffusion Model). The run folder "
                "output/rehyat_runs/<run_name> keeps checkpoints: Cancel writes one, and the same run name "
                "resumes (a larger 'steps' extends the run)."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="a ReHyAt-patched Wan2.1 (ReHyAt Patch Model with a distilled φ)"
                ),
                io.String.Input(
                    "dataset_name",
                    default="my_dataset",
                    tooltip="dataset folder under models/rehyat_datasets (ReHyAt Make Dataset)",
                ),
                run_name_input(
                    "wan_rehyat_finetune",
                    "run folder output/rehyat_runs/<run_name>: the same name resumes; a run made "
                    "for another model, dataset or settings is refused",
                ),
                io.Combo.Input(
                    "trainable",
                    options=list(TRAINABLE_SETS),
                    default="lora",
                    tooltip="lora: LoRA on every block linear + φ (cheap); phi: φ only; "
                    "phi+self_attn; everything: all weights (the paper)",
                ),
                io.Combo.Input(
                    "output",
                    options=list(OUTPUTS),
                    default="lora",
                    tooltip="lora: a LoRA file (needs trainable=lora) — 'full': a whole new checkpoint "
                    "in models/diffusion_models; both also write the φ file",
                ),
                io.String.Input(
                    "output_name",
                    default="wan_rehyat_ft",
                    tooltip="file name stem of the written files (+ _s<step>, then _01, _02 … if "
                    "taken): existing files are never overwritten",
                ),
                io.Int.Input(
                    "steps",
                    default=_DEFAULTS.steps,
                    min=1,
                    max=1_000_000,
                    tooltip="optimizer steps in total (paper: 1000)",
                ),
                io.Int.Input(
                    "batch_size",
                    default=_DEFAULTS.batch_size,
                    min=1,
                    max=4096,
                    tooltip="samples per optimizer step (paper: 16); a multiple of micro_batch",
                ),
                io.Int.Input(
                    "micro_batch",
                    default=1,
                    min=1,
                    max=4096,
                    tooltip="samples per forward pass; batch_size/micro_batch passes are accumulated",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-8,
                    max=1.0,
                    step=1e-6,
                    tooltip="AdamW learning rate (paper, everything: 1e-5; LoRA: ~1e-4)",
                ),
                io.Int.Input(
                    "lora_rank",
                    default=_DEFAULTS.lora_rank,
                    min=1,
                    max=1024,
                    tooltip="rank of every LoRA adapter (trainable=lora)",
                ),
                io.Float.Input(
                    "shift",
                    default=DEFAULT_TRAIN_SHIFT,
                    min=0.01,
                    max=100.0,
                    step=0.1,
                    tooltip="Wan timestep shift of the training noise levels (higher: more high-noise "
                    "training)",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=True,
                    tooltip="recompute blocks in the backward pass: far less memory, ~30% slower",
                ),
                checkpoint_every_input(
                    _DEFAULTS.checkpoint_every,
                    "write a resumable checkpoint every N steps (also at the end and on Cancel)",
                ),
                seed_input("seed of the data order, noise levels, noise and LoRA initialisation"),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="the fine-tuned model (patched clone)"),
                loss_curve_output("training loss per step"),
                io.String.Output(
                    display_name="report", tooltip="files written, loss before/after on fixed noise, settings"
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        dataset_name,
        run_name,
        trainable,
        output,
        output_name,
        steps,
        batch_size,
        micro_batch,
        learning_rate,
        lora_rank,
        shift,
        gradient_checkpointing,
        checkpoint_every,
        seed,
    ) -> io.NodeOutput:
        """Train (or resume), write the files, return the fine-tuned clone; see the node description."""
        import comfy.model_management
        import comfy.sd
        import folder_paths

        validate_run_name(run_name)
        validate_run_name(output_name, "output_name")
        if output == "lora" and trainable != "lora":
            raise ValueError(
                f"output: 'lora' needs trainable='lora' (got {trainable!r}); choose output 'full'"
            )
        patch = comfy_patch_info(model)
        if patch is None:
            raise ValueError("model: connect a ReHyAt-patched model (ReHyAt Patch Model with a distilled φ)")
        if patch.forward_mode != "parallel":
            raise ValueError(
                "model: patch with forward_mode 'parallel' for training (recurrent is inference-only)"
            )
        config = FinetuneConfig(
            trainable=trainable,
            lora_rank=lora_rank,
            steps=steps,
            batch_size=batch_size,
            micro_batch=micro_batch,
            learning_rate=learning_rate,
            gradient_checkpointing=gradient_checkpointing,
            checkpoint_every=checkpoint_every,
            seed=seed,
            flow=FlowMatchingConfig(shift=shift),
        )
        dataset = LatentDataset.open(dataset_path(dataset_name))
        progress = progress_callback(steps)
        base_fingerprint = model_fingerprint(model)  # here: it reads inference tensors as they are
        identity = {
            "model": dataclasses.asdict(comfy_base_info(model)),
            "fingerprint": base_fingerprint,
            "conversion": patch.config.to_dict(),
            "dataset": dataset.identity(),
            "finetune": config.identity(),
        }
        with autograd_enabled():
            hybrid = {i: copy.deepcopy(m) for i, m in patch.hybrid.items()}  # the input's φ stay untouched
            work = patch_comfy_wan(_without_rehyat(model), patch.config, hybrid)
            comfy.model_management.load_models_gpu([work], force_full_load=True)
            wan = work.model.diffusion_model
            _autograd_ready(wan)
            options = {"wrappers": work.wrappers}

            def model_fn(x, t, context):
                return wan(x, t, context, transformer_options=dict(options))

            device = next(wan.parameters()).device
            trained = select_for_config(wan, config)
            originals = {
                n: p.detach().clone()
                for n, p in trained.parameters.items()
                if ".hybrid." not in n and ".lora." not in n
            }
            run = RunFolder(runs_root(), run_name, identity)
            before = evaluation_loss(model_fn, dataset, flow=config.flow, device=device)
            try:
                result = finetune(
                    wan,
                    model_fn,
                    dataset,
                    config,
                    run=run,
                    trainable=trained,
                    progress=progress,
                    should_stop=should_stop,
                )
                if result.cancelled:
                    raise interrupted()
                after = evaluation_loss(model_fn, dataset, flow=config.flow, device=device)
                info = {
                    "stage": "finetune",
                    "steps": result.step,
                    "learning_rate": learning_rate,
                    "trainable": trainable,
                    "batch_size": batch_size,
                    "seed": seed,
                    "run": run_name,
                    "dataset": dataset_name,
                    "dataset_samples": len(dataset),
                    "resumed_from": result.resumed_from,
                }
                out_model, metadata = None, {"training": json.dumps(info)}
                if output == "lora":
                    lora_sd = comfy_lora_state_dict(wan)
                    weights = (
                        "lora",
                        folder_paths.get_folder_paths("loras")[0],
                        "_lora.safetensors",
                        lambda p: atomic_save_file(lora_sd, metadata, p, replace=False),
                    )
                    fingerprint = base_fingerprint
                else:
                    full_sd = base_state_dict(wan)
                    weights = (
                        "full",
                        folder_paths.get_folder_paths("diffusion_models")[0],
                        ".safetensors",
                        lambda p: atomic_save_file(full_sd, metadata, p, replace=False),
                    )
                    fingerprint = fingerprint_module(wan, "wan", num_layers=len(wan.blocks))
                phi = (
                    "phi",
                    register_rehyat_folder(),
                    "_phi.safetensors",
                    lambda p: save_phi_weights(
                        p, hybrid, patch.config, comfy_base_info(model), fingerprint, training=info,
                        replace=False,
                    ),
                )
                saved = create_file_group(  # a new stem, race-free: never overwrites a file
                    f"{output_name}_s{result.step}", [item[1:] for item in (weights, phi)]
                )
                files = {item[0]: str(path) for item, path in zip((weights, phi), saved, strict=True)}
            finally:
                detach_lora(wan)
                with torch.no_grad():  # the shared model gets its own weights back
                    for name, value in originals.items():
                        trained.parameters[name].data.copy_(value)
                _unload(work)
            if output == "lora":
                out_model = comfy.sd.load_lora_for_models(work, None, lora_sd, 1.0, 0)[0]
            else:
                out_model = work.clone()
                updated = {f"diffusion_model.{n}": ("set", (full_sd[n],)) for n in originals}
                out_model.add_patches(updated, 1.0)
        image = loss_curve_tensor({"flow-matching loss": result.losses})
        report = {
            "loss_fixed_noise_before": round(before, 5),
            "loss_fixed_noise_after": round(after, 5),
            "trained_parameters": trained.count,
            "files": files,
            "run_folder": str(run.path),
            "seconds": round(result.seconds, 1),
            **info,
        }
        run.write_json("report.json", report)
        return io.NodeOutput(out_model, image, json.dumps(report, indent=1))


def _without_rehyat(model):
    """A clone of a ReHyAt-patched ModelPatcher without its ReHyAt object patches, wrapper and attachment."""
    patch = comfy_patch_info(model)
    clone = model.clone()
    for index in patch.blocks:
        clone.object_patches.pop(f"diffusion_model.blocks.{index}.self_attn", None)
    clone.remove_wrappers_with_key(DIFFUSION_MODEL_WRAPPER, WRAPPER_KEY)
    clone.attachments.pop(ATTACHMENT_KEY, None)
    return clone


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


NODES = [ReHyAtFinetune]
