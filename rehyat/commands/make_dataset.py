"""``python -m rehyat make-dataset`` — fine-tuning samples from the softmax teacher's own generations.

The paper's synthetic recipe: for every prompt × seed, the original (softmax) Wan2.1 samples a clean
latent (Euler on Wan's flow, classifier-free guidance) and the (latent, prompt embedding) pair is
appended to the dataset folder, whose manifest records the shapes, the model and how each sample
was made. Prompts are given as conditioning files (saved with ComfyUI-ReHyAt's conditioning save
node or rehyat.conditioning_io.save_conditioning), so the 11 GB text encoder is not needed here.

Samples from real videos (VAE-encoded frames) are added in ComfyUI with the ReHyAtMakeDataset node.
Running the command again with more seeds or prompts appends to the same folder; every sample must
have the same size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "make-dataset"
HELP = "fine-tuning dataset from the teacher's generations (prompt conditionings × seeds)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``make-dataset`` options."""
    parser.add_argument(
        "--model", required=True, help="Wan2.1 transformer .safetensors (the softmax teacher)"
    )
    parser.add_argument("--out", required=True, help="dataset folder (created, or appended to)")
    parser.add_argument(
        "--prompts", nargs="+", required=True, help="conditioning files (.safetensors), one per prompt"
    )
    parser.add_argument("--negative", help="conditioning file of the negative prompt (for guidance)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="noise seeds (each prompt × each seed)"
    )
    parser.add_argument(
        "--frames", type=int, default=81, help="video frames, 1 + 4k (default 81 → 21 latent)"
    )
    parser.add_argument("--height", type=int, default=320, help="video height in pixels, multiple of 16")
    parser.add_argument("--width", type=int, default=480, help="video width in pixels, multiple of 16")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (the paper's teacher: 50)")
    parser.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (paper: 5)")
    parser.add_argument(
        "--shift", type=float, default=8.0, help="sampling shift (ComfyUI's Wan2.1 default 8)"
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="compute dtype (default: bf16 on CUDA, fp32 on CPU)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the samples; prints a JSON summary."""
    print(json.dumps(make_dataset_from_args(args), indent=2))
    return 0


def make_dataset_from_args(args: argparse.Namespace) -> dict:
    """The command's work; returns the summary."""
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    from ..conditioning_io import load_conditioning
    from ..models.wan import WanDiT
    from ..training.dataset import LatentDataset
    from ..training.dataset_build import (
        WAN21_DATASET_MODEL,
        conditioning_tensor,
        generate_teacher_latent,
    )
    from ..video_latent import video_latent_shape

    shape = video_latent_shape(args.frames, args.height, args.width)
    if args.seeds and min(args.seeds) < 0:
        raise ValueError(f"--seeds must be ≥ 0; got {args.seeds}")
    model_path = Path(args.model)
    if not model_path.is_file():
        raise ValueError(f"--model {model_path} is not a file")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    prompts = [(Path(p), conditioning_tensor(load_conditioning(p), f"--prompts {p}")) for p in args.prompts]
    negative = conditioning_tensor(load_conditioning(args.negative), "--negative") if args.negative else None
    model = WanDiT.from_state_dict(load_file(str(model_path))).to(device, dtype).eval()
    if shape[0] != model.config.in_dim:
        raise ValueError(
            f"the model takes {model.config.in_dim} latent channels, not {shape[0]} (I2V is not supported)"
        )
    dataset = LatentDataset(args.out, model=WAN21_DATASET_MODEL)
    jobs = [(path, context, seed) for path, context in prompts for seed in args.seeds]
    written = []
    bar = tqdm(total=len(jobs) * args.steps, desc="make-dataset", unit="step")
    for path, context, seed in jobs:
        latent = generate_teacher_latent(
            lambda x, t, c: model(x, t.to(dtype), c),
            context,
            negative,
            seed=seed,
            latent_shape=shape,
            steps=args.steps,
            guidance=args.cfg,
            shift=args.shift,
            device=device,
            dtype=dtype,
            callback=lambda i, x: bar.update(1),
        )
        info = {
            "source": "teacher",
            "teacher": model_path.name,
            "prompt_file": path.name,
            "seed": seed,
            "steps": args.steps,
            "cfg": args.cfg,
            "shift": args.shift,
            "sampler": "euler",
            "negative_file": Path(args.negative).name if args.negative else None,
            "video_frames": args.frames,
            "height": args.height,
            "width": args.width,
            "dtype": dtype_name,
        }
        written.append(str(dataset.append(latent, context.float(), info)))
    bar.close()
    return {
        "dataset": str(Path(args.out)),
        "samples": len(dataset),
        "added": len(written),
        "latent_shape": list(shape),
        "files": written,
    }
