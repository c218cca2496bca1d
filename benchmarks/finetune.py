"""Stage-2 fine-tuning throughput and memory: LoRA vs full, with and without gradient checkpointing (JSON).

A reduced-depth Wan2.1 of real width (dim 1536, 12 heads × 128, ffn 8960, text 4096; the pure-PyTorch
WanDiT with the original key names) with every block converted to ReHyAt (paper's Tc = 3, To = 1,
φ 256/256), trained by :func:`rehyat.training.finetune.finetune` on a synthetic dataset of one
320×480 × 81-frame latent (16 × 21 × 40 × 60 → 12,600 tokens). Every (trainable, checkpointing)
case runs in its own process: ``steps`` optimizer steps of batch 1 after one warm-up step; peak
memory is the process's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA) during them.

Two estimates for the paper's stage 2 (1,000 iterations × batch 16 on Wan2.1-1.3B = 30 blocks):
per case, the measured per-sample time of the reduced model scaled by depth (on the device
measured: a CPU run gives CPU-hours, and says so); and an analytic FLOP count at the paper's 81 ×
320 × 480 on an A100 at 40 % utilisation (:func:`analytic_estimate`, assumptions in its output).

    python benchmarks/finetune.py [--frames 81] [--height 320] [--width 480] [--layers 2] [--steps 1]
                                  [--device cpu|cuda] [--out FILE] [--estimate-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("lora", False), ("lora", True), ("everything", False), ("everything", True)]
PAPER_ITERATIONS, PAPER_BATCH, WAN_1_3B_BLOCKS = 1000, 16, 30


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_case(trainable: str, checkpointing: bool, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` steps (after one warm-up) in this process; return time and memory."""
    sys.path.insert(0, str(ROOT))
    import torch

    from rehyat.config import ConversionConfig
    from rehyat.models.wan import WanDiT, WanDiTConfig
    from rehyat.models.wan_rehyat import convert
    from rehyat.training.dataset import LatentDataset
    from rehyat.training.finetune import FinetuneConfig, finetune
    from rehyat.video_latent import video_latent_shape

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = WanDiT(WanDiTConfig(num_layers=args.layers)).to(device)
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    convert(model, ConversionConfig())
    shape = video_latent_shape(args.frames, args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        data = LatentDataset(Path(tmp) / "data", model={"bench": True})
        data.append(torch.randn(shape), torch.randn(77, 4096), {"source": "synthetic"})

        def config(steps: int) -> FinetuneConfig:
            return FinetuneConfig(
                trainable=trainable,
                steps=steps,
                batch_size=1,
                learning_rate=1e-5,
                gradient_checkpointing=checkpointing,
            )

        fn = lambda x, t, c: model(x, t, c)  # noqa: E731
        from rehyat.training.finetune import select_for_config

        trained = select_for_config(model, config(1))
        finetune(model, fn, data, config(1), trainable=trained)  # warm-up (allocator, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak()
        start = time.perf_counter()
        finetune(model, fn, data, config(args.steps), trainable=trained)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_mib()
    return {
        "trainable": trainable,
        "gradient_checkpointing": checkpointing,
        "trained_parameters": trained.count,
        "seconds_per_sample": round(seconds, 3),
        "samples_per_hour": round(3600 / seconds, 1),
        "peak_memory_mib": round(peak, 1),
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def estimate(case: dict, layers: int, device: str) -> dict:
    """Hours for the paper's 1,000 × 16 samples on a 30-block Wan2.1-1.3B, scaled by depth."""
    per_sample = case["seconds_per_sample"] * WAN_1_3B_BLOCKS / layers
    hours = per_sample * PAPER_ITERATIONS * PAPER_BATCH / 3600
    unit = "gpu_hours" if device.startswith("cuda") else "cpu_hours_on_this_machine"
    return {
        unit: round(hours, 1),
        "basis": f"{case['seconds_per_sample']} s/sample × {WAN_1_3B_BLOCKS}/"
        f"{layers} blocks × {PAPER_ITERATIONS} iterations × batch {PAPER_BATCH}",
    }


def analytic_estimate(frames: int = 81, height: int = 320, width: int = 480, *, text_tokens: int = 512,
                      peak_tflops: float = 312.0, utilisation: float = 0.4) -> dict:
    """GPU-hours of the paper's stage 2 on Wan2.1-1.3B from FLOPs (no measurement; assumptions stated).

    Per block and token: self-attention q/k/v/o and cross-attention q/o projections (6·d²) and the FFN
    (2·d·ffn) at 2 FLOPs per multiply-add; ReHyAt's softmax window (Tc + To = 4 frames of keys) and
    the cross-attention over ``text_tokens`` at 4·keys·d; the linear-attention part and the
    embeddings are < 2 % and left out. Training = 3 × forward (4 × with gradient checkpointing).
    """
    sys.path.insert(0, str(ROOT))
    from rehyat.video_latent import video_latent_shape

    d, ffn, blocks = 1536, 8960, WAN_1_3B_BLOCKS
    _, t, h, w = video_latent_shape(frames, height, width, exact=False)
    per_frame = (h // 2) * (w // 2)
    tokens = t * per_frame
    window = min(4, t) * per_frame
    per_token = 2 * (6 * d * d + 2 * d * ffn) + 4 * window * d + 4 * text_tokens * d
    forward = per_token * tokens * blocks
    samples = PAPER_ITERATIONS * PAPER_BATCH
    rate = peak_tflops * 1e12 * utilisation
    return {
        "tokens_per_sample": tokens, "forward_tflop_per_sample": round(forward / 1e12, 1),
        "gpu_hours": round(3 * forward * samples / rate / 3600, 1),
        "gpu_hours_with_checkpointing": round(4 * forward * samples / rate / 3600, 1),
        "basis": f"{PAPER_ITERATIONS} iterations × batch {PAPER_BATCH} × 3 (fwd+bwd) × forward FLOPs of "
                 f"{blocks} blocks at {frames}×{height}×{width}; {peak_tflops:g} TFLOP/s bf16 peak (A100) at "
                 f"{utilisation:.0%} utilisation — an analytic estimate, not measured on a GPU",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=81, help="video frames (1 + 4k)")
    parser.add_argument("--height", type=int, default=320, help="video height, pixels")
    parser.add_argument("--width", type=int, default=480, help="video width, pixels")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (real width)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per case (after a warm-up step)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the analytic GPU-hour estimate only")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # child process: trainable, checkpointing
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1] == "1", args)))
        return 0
    estimate_1_3b = analytic_estimate(args.frames, args.height, args.width)
    if args.estimate_only:
        print(json.dumps({"paper_stage2_analytic_estimate_1_3b": estimate_1_3b}, indent=2))
        return 0
    results = []
    for trainable, checkpointing in CASES:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            trainable,
            "1" if checkpointing else "0",
            "--frames",
            str(args.frames),
            "--height",
            str(args.height),
            "--width",
            str(args.width),
            "--layers",
            str(args.layers),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # RSS follows live tensors
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if done.returncode:
            results.append(
                {
                    "trainable": trainable,
                    "gradient_checkpointing": checkpointing,
                    "error": done.stderr[-1500:],
                }
            )
            continue
        case = json.loads(done.stdout.strip().splitlines()[-1])
        case["paper_stage2_estimate_1_3b"] = estimate(case, args.layers, args.device)
        results.append(case)
    report = {
        "benchmark": "finetune",
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": _threads(),
        "model": f"WanDiT dim 1536, 12 heads, ffn 8960, {args.layers} blocks, "
        "all ReHyAt (Tc 3, To 1, φ 256/256)",
        "video": f"{args.frames} frames × {args.height}×{args.width}",
        "batch": 1,
        "timed_steps": args.steps,
        "precision": "bf16 autocast, fp32 trained weights" if args.device.startswith("cuda") else "fp32",
        "cases": results,
        "paper_stage2_analytic_estimate_1_3b": estimate_1_3b,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
