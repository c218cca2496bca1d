"""Node: stage-2 flow-matching fine-tune of a ReHyAt-patched Wan2.1 MODEL (LoRA or full, resumable).

The incoming MODEL is never changed: φ are trained on copies, LoRA adapters are removed after
training, and weights trained in place ("full" sets) are restored; the output MODEL carries the
result as ComfyUI patches (the LoRA loaded the stock way, or "set" weight patches).
"""

from __future__ import annotations

import dataclasses
import json

from comfy_api.latest import io

from ..rehyat.atomic import atomic_save_file
from ..rehyat.integrations.comfyui_wan import comfy_base_info, comfy_patch_info
from ..rehyat.training.dataset import LatentDataset
from ..rehyat.training.export import base_state_dict
from ..rehyat.training.finetune import FinetuneConfig
from ..rehyat.training.finetune_job import FinetuneInputs, FinetuneJob
from ..rehyat.training.flow_matching import DEFAULT_TRAIN_SHIFT, FlowMatchingConfig
from ..rehyat.training.job import OutputFile
from ..rehyat.training.lora import comfy_lora_state_dict
from ..rehyat.training.runs import validate_run_name
from ..rehyat.training.trainable import TRAINABLE_SETS
from ..rehyat.weights import fingerprint_module, save_phi_weights
from .dataset import dataset_path
from .folders import register_rehyat_folder
from .patching import model_fingerprint
from .training_comfy import (
    FinetuneWorkspace,
    autograd_enabled,
    interrupted,
    loss_curve_tensor,
    output_folder,
    runs_root,
    training_hooks,
)
from .training_common import checkpoint_every_input, loss_curve_output, run_name_input, seed_input

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
                io.Model.Input("model",
                               tooltip="a ReHyAt-patched Wan2.1 (ReHyAt Patch Model with a distilled φ)"),
                io.String.Input("dataset_name", default="my_dataset",
                                tooltip="dataset folder under models/rehyat_datasets (ReHyAt Make Dataset)"),
                run_name_input("wan_rehyat_finetune",
                               "run folder output/rehyat_runs/<run_name>: the same name resumes; a run "
                               "made for another model, dataset or settings is refused"),
                io.Combo.Input("trainable", options=list(TRAINABLE_SETS), default="lora",
                               tooltip="lora: LoRA on every block linear + φ (cheap); phi: φ only; "
                                       "phi+self_attn; everything: all weights (the paper)"),
                io.Combo.Input("output", options=list(OUTPUTS), default="lora",
                               tooltip="lora: a LoRA file (needs trainable=lora) — 'full': a whole new "
                                       "checkpoint in models/diffusion_models; both also write the φ file"),
                io.String.Input("output_name", default="wan_rehyat_ft",
                                tooltip="file name stem of the written files (+ _s<step>, then _01, _02 … "
                                        "if taken): existing files are never overwritten"),
                io.Int.Input("steps", default=_DEFAULTS.steps, min=1, max=1_000_000,
                             tooltip="optimizer steps in total (paper: 1000)"),
                io.Int.Input("batch_size", default=_DEFAULTS.batch_size, min=1, max=4096,
                             tooltip="samples per optimizer step (paper: 16); a multiple of micro_batch"),
                io.Int.Input("micro_batch", default=1, min=1, max=4096,
                             tooltip="samples per forward pass; batch_size/micro_batch passes are "
                                     "accumulated"),
                io.Float.Input("learning_rate", default=1e-4, min=1e-8, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate (paper, everything: 1e-5; LoRA: ~1e-4)"),
                io.Int.Input("lora_rank", default=_DEFAULTS.lora_rank, min=1, max=1024,
                             tooltip="rank of every LoRA adapter (trainable=lora)"),
                io.Float.Input("shift", default=DEFAULT_TRAIN_SHIFT, min=0.01, max=100.0, step=0.1,
                               tooltip="Wan timestep shift of the training noise levels (higher: more "
                                       "high-noise training)"),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="recompute blocks in the backward pass: far less memory, ~30% "
                                         "slower"),
                checkpoint_every_input(_DEFAULTS.checkpoint_every,
                                       "write a resumable checkpoint every N steps (also at the end and on "
                                       "Cancel)"),
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
    def execute(cls, model, dataset_name, run_name, trainable, output, output_name, steps, batch_size,
                micro_batch, learning_rate, lora_rank, shift, gradient_checkpointing, checkpoint_every,
                seed) -> io.NodeOutput:
        """Train (or resume), write the files, return the fine-tuned clone; see the node description."""
        validate_run_name(run_name)
        validate_run_name(output_name, "output_name")
        if output == "lora" and trainable != "lora":
            raise ValueError(
                f"output: 'lora' needs trainable='lora' (got {trainable!r}); choose output 'full'"
            )
        patch = _trainable_patch(model)
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
        hooks = training_hooks(steps)
        base_fingerprint = model_fingerprint(model)  # here: it reads inference tensors as they are
        identity = {
            "model": dataclasses.asdict(comfy_base_info(model)),
            "fingerprint": base_fingerprint,
            "conversion": patch.config.to_dict(),
            "dataset": dataset.identity(),
            "finetune": config.identity(),
        }
        inputs = FinetuneInputs(config, runs_root(), run_name, identity)
        with autograd_enabled():
            with FinetuneWorkspace(model, patch, config) as ws:
                job = FinetuneJob(inputs, ws.wan, ws.model_fn, dataset, trainable=ws.trainable, hooks=hooks,
                                  measure_loss_on=ws.device)
                done = job.run()
                if done.result.cancelled:
                    raise interrupted()
                info = job.record(done.result, run=run_name, dataset=dataset_name,
                                  dataset_samples=len(dataset))
                metadata = {"training": json.dumps(info)}
                if output == "lora":
                    trained = comfy_lora_state_dict(ws.wan)
                    weights = OutputFile("lora", output_folder("loras"), "_lora.safetensors",
                                         lambda p: atomic_save_file(trained, metadata, p, replace=False))
                    fingerprint = base_fingerprint
                else:
                    trained = base_state_dict(ws.wan)
                    weights = OutputFile("full", output_folder("diffusion_models"), ".safetensors",
                                         lambda p: atomic_save_file(trained, metadata, p, replace=False))
                    fingerprint = fingerprint_module(ws.wan, "wan", num_layers=len(ws.wan.blocks))
                base = comfy_base_info(model)
                phi = OutputFile("phi", register_rehyat_folder(), "_phi.safetensors",
                                 lambda p: save_phi_weights(p, ws.hybrid, patch.config, base, fingerprint,
                                                            training=info, replace=False))
                files = job.write_outputs(done.result, output_name, [weights, phi])
            out_model = ws.lora_model(trained) if output == "lora" else ws.full_model(trained)
        report = {
            "loss_fixed_noise_before": round(done.loss_before, 5),
            "loss_fixed_noise_after": round(done.loss_after, 5),
            "trained_parameters": ws.trainable.count,
            "files": files,
            "run_folder": str(done.run.path),
            "seconds": round(done.result.seconds, 1),
            **info,
        }
        done.run.write_json("report.json", report)
        image = loss_curve_tensor({"flow-matching loss": done.result.losses})
        return io.NodeOutput(out_model, image, json.dumps(report, indent=1))


def _trainable_patch(model):
    """The ReHyAt patch of ``model`` if it can be fine-tuned, else a ValueError saying what to change."""
    patch = comfy_patch_info(model)
    if patch is None:
        raise ValueError("model: connect a ReHyAt-patched model (ReHyAt Patch Model with a distilled φ)")
    if patch.forward_mode != "parallel":
        raise ValueError(
            "model: patch with forward_mode 'parallel' for training (recurrent is inference-only)"
        )
    return patch


NODES = [ReHyAtFinetune]
