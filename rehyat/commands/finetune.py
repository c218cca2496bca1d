"""``python -m rehyat finetune`` — stage-2 flow-matching fine-tune of a ReHyAt Wan2.1 DiT.

Loads a Wan2.1 transformer (.safetensors, original / ComfyUI / diffusers key names) with the
pure-PyTorch WanDiT (no ComfyUI needed), converts it with a φ file from stage 1, and trains on a
dataset folder made by ``python -m rehyat make-dataset`` with Wan2.1's rectified-flow objective.

Outputs are always NEW files (the input checkpoint is never touched), by default in the run folder:
  <run>/<run-name>_s<step>_phi.safetensors   φ (load with ReHyAtLoadPhi next to the base model)
  <run>/<run-name>_s<step>_lora.safetensors  LoRA in ComfyUI's format (LoraLoaderModelOnly), --output lora
  <run>/<run-name>_s<step>.safetensors       the whole fine-tuned transformer (UNETLoader), --output full
(_01, _02 … appended when a name is taken), plus loss.png and report.json. The run folder keeps
resumable checkpoints: run the same command again (same --run-name) after an interruption and
training continues where it stopped.

Several GPUs / processes: torchrun --nproc_per_node=N -m rehyat finetune ...  (nccl on CUDA,
gloo on CPU); --batch-size is the global batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "finetune"
HELP = "stage-2 flow-matching fine-tune (LoRA or full) on a make-dataset folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``finetune`` options (defaults: the paper's stage 2 where it has one)."""
    from ..training.finetune import PRECISIONS
    from ..training.flow_matching import DEFAULT_TRAIN_SHIFT, TIMESTEP_SAMPLINGS
    from ..training.trainable import TRAINABLE_SETS

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument(
        "--model", required=True, help="Wan2.1 transformer .safetensors (the base, never modified)"
    )
    io.add_argument(
        "--phi", help="φ file from stage 1 (ReHyAt blocks); without it the model trains as softmax"
    )
    io.add_argument(
        "--dataset", required=True, help="dataset folder written by `python -m rehyat make-dataset`"
    )
    io.add_argument(
        "--run-name",
        required=True,
        help="name of the run folder (checkpoints, outputs); the same name resumes the run",
    )
    io.add_argument(
        "--runs-dir", default="rehyat_runs", help="where run folders live (default: ./rehyat_runs)"
    )
    io.add_argument(
        "--output",
        choices=("lora", "full", "phi"),
        default=None,
        help="what to write besides φ: 'lora' (ComfyUI LoRA file), 'full' (whole transformer) or "
        "'phi' (φ only). Default: lora for --trainable lora, phi for phi, else full",
    )
    io.add_argument(
        "--output-dir",
        help="folder for the output files (default: the run folder); e.g. "
        "ComfyUI/models/loras or models/diffusion_models",
    )
    io.add_argument(
        "--full-dtype",
        choices=("bf16", "fp16", "fp32"),
        default="bf16",
        help="dtype of the full checkpoint (default bf16, like the released Wan2.1 files)",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--trainable",
        choices=TRAINABLE_SETS,
        default="lora",
        help="what trains: φ only; φ + self-attention; everything (the paper); or LoRA on every "
        "block linear + φ (default; LoLCATs' cheap choice)",
    )
    train.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r (default 16)")
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: = rank, scale 1)")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps (paper: 1000)")
    train.add_argument(
        "--batch-size", type=int, default=16, help="global batch over all processes (paper: 16)"
    )
    train.add_argument(
        "--micro-batch",
        type=int,
        default=1,
        help="samples per forward/backward; the rest of the batch is gradient accumulation",
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="AdamW learning rate (default: 1e-5 as the paper; 1e-4 for --trainable lora)",
    )
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient-norm clip (0: off)")
    train.add_argument(
        "--shift",
        type=float,
        default=DEFAULT_TRAIN_SHIFT,
        help=f"Wan timestep shift of the training σ (default {DEFAULT_TRAIN_SHIFT})",
    )
    train.add_argument(
        "--timestep-sampling",
        choices=TIMESTEP_SAMPLINGS,
        default="uniform",
        help="base distribution of σ before the shift",
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast on CUDA with fp32 trained weights, fp32 on CPU",
    )
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each block in the backward pass (less memory, ~30%% slower)",
    )
    train.add_argument(
        "--checkpoint-every", type=int, default=100, help="save a resumable checkpoint every N steps"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of data order, noise, σ and LoRA init")
    train.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    """Train and write the outputs; prints the report as JSON."""
    report = finetune_from_args(args)
    if report is not None:
        print(json.dumps(report, indent=2))
    return 0


def finetune_from_args(args: argparse.Namespace) -> dict | None:
    """The command's work; returns the report on the main process (None on other ranks)."""
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    from ..models.wan import WanDiT
    from ..models.wan_rehyat import conversion_config, load_phi, save_phi
    from ..training.dataset import LatentDataset
    from ..training.distributed import init_distributed, teardown_distributed
    from ..training.export import save_comfy_lora, save_full_checkpoint
    from ..training.finetune import FinetuneConfig
    from ..training.finetune_job import FinetuneInputs, FinetuneJob
    from ..training.flow_matching import FlowMatchingConfig
    from ..training.job import OutputFile, TrainingHooks
    from ..training.plots import loss_curve_png
    from ..training.runs import validate_run_name

    validate_run_name(args.run_name, "--run-name")
    output = args.output or {"lora": "lora", "phi": "phi"}.get(args.trainable, "full")
    if output == "lora" and args.trainable != "lora":
        raise ValueError("--output lora needs --trainable lora")
    if output == "phi" and args.trainable != "phi":
        raise ValueError("--output phi only keeps φ: use it with --trainable phi")
    learning_rate = args.learning_rate or (1e-4 if args.trainable == "lora" else 1e-5)
    config = FinetuneConfig(
        trainable=args.trainable,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        learning_rate=learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        flow=FlowMatchingConfig(shift=args.shift, sampling=args.timestep_sampling),
    )
    model_path = Path(args.model)
    if not model_path.is_file():
        raise ValueError(f"--model {model_path} is not a file")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = init_distributed(device)
    try:
        device = ctx.device if ctx.distributed else device
        dataset = LatentDataset.open(args.dataset)
        model = WanDiT.from_state_dict(load_file(str(model_path)))
        if dataset.latent_shape[0] != model.config.in_dim or dataset.context_dim != model.config.text_dim:
            raise ValueError(
                f"--dataset latents have {dataset.latent_shape[0]} channels and {dataset.context_dim}-wide "
                f"text, "
                f"but the model takes {model.config.in_dim} and {model.config.text_dim}"
            )
        model.float().to(device)
        if args.phi:
            load_phi(model, args.phi)
        identity = {
            "model": model_path.name,
            "model_config": model.config.to_dict(),
            "phi": Path(args.phi).name if args.phi else None,
            "conversion": c.to_dict() if (c := conversion_config(model)) else None,
            "dataset": dataset.identity(),
            "finetune": config.identity(),
        }
        bar = tqdm(total=config.steps, desc="finetune", unit="step", disable=not ctx.is_main)

        def progress(step: int, total: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.refresh()

        inputs = FinetuneInputs(config, args.runs_dir, args.run_name, identity)
        job = FinetuneJob(
            inputs, model, lambda x, t, c: model(x, t, c), dataset, ctx=ctx, hooks=TrainingHooks(progress)
        )
        done = job.run()
        result, run_folder = done.result, done.run
        bar.close()
        if not ctx.is_main:
            return None
        out_dir = Path(args.output_dir) if args.output_dir else run_folder.path
        info = job.record(result, dataset_samples=len(dataset), base_model=model_path.name)
        outputs = []  # new files sharing one free stem, never overwriting
        if output == "lora":
            outputs.append(
                OutputFile("lora", out_dir, "_lora.safetensors",
                           lambda p: save_comfy_lora(model, p, info=info))
            )
        elif output == "full":
            from ..training.lora import merge_lora

            merge_lora(model)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.full_dtype]
            outputs.append(
                OutputFile("full", out_dir, ".safetensors",
                           lambda p: save_full_checkpoint(model, p, info=info, dtype=dtype))
            )
        if conversion_config(model) is not None:
            outputs.append(
                OutputFile("phi", out_dir, "_phi.safetensors",
                           lambda p: save_phi(model, p, training=info, replace=False))
            )
        files = job.write_outputs(result, args.run_name, outputs)
        files["loss_curve"] = str(
            loss_curve_png(
                {"flow-matching loss": result.losses},
                run_folder.path / "loss.png",
                title=f"finetune {args.run_name}",
            )
        )
        report = {
            **info,
            "losses_first": result.losses[:5],
            "losses_last": result.losses[-5:],
            "seconds": round(result.seconds, 2),
            "trained_parameters": result.trainable.count,
            "device": str(device),
            "processes": ctx.world_size,
            "files": files,
        }
        run_folder.write_json("report.json", report)
        return report
    finally:
        teardown_distributed()
