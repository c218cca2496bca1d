"""Cost of online φ distillation: captured teacher evaluations per hour and peak memory (JSON out).

A reduced-depth Wan2.1 of real width (dim 1536, 12 heads × 128, ffn 8960; random weights, original
key names, the pure-PyTorch :class:`rehyat.models.wan.WanDiT`) is sampled at the paper's ablation
size (320×480, 81 frames → 21 latent frames × 600 tokens) with guidance (cond + uncond rows in one
forward), and every captured forward trains every block's φ (paper's φ: 2-layer MLP, 256 wide).
Measured: seconds per captured forward (teacher part and student part), one uncaptured teacher
forward, and the process's peak memory above the loaded model (VmHWM on CPU,
``max_memory_allocated`` on CUDA).

From these the script extrapolates Wan2.1-1.3B (30 blocks) — basis stated in the JSON:
time per captured forward = teacher time × 30 / layers + student time per block × converted blocks,
times the number of distillation steps (``--distill-steps``; the paper does not state it, the
pack's default is 1000), and a FLOP-based GPU estimate at an ASSUMED sustained throughput
(``--gpu-tflops``; no GPU was measured here).

    python benchmarks/distill.py [--layers 2] [--length 81] [--captured 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def block_flops(tokens: int, context: int, dim: int, ffn: int) -> float:
    """Forward FLOPs of one Wan block for one row (matmuls, 2 per multiply-add)."""
    self_attn = 4 * 2 * tokens * dim * dim + 4 * tokens * tokens * dim
    cross = 2 * 2 * tokens * dim * dim + 2 * 2 * context * dim * dim + 4 * tokens * context * dim
    return self_attn + cross + 2 * 2 * tokens * dim * ffn


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=2, help="blocks of the measured model")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=8960)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--length", type=int, default=81, help="video frames")
    parser.add_argument("--context", type=int, default=512, help="text tokens (Wan pads umT5 to 512)")
    parser.add_argument("--captured", type=int, default=2, help="captured forwards to time (after 1 warm-up)")
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--full-layers", type=int, default=30, help="blocks of Wan2.1-1.3B")
    parser.add_argument("--converted", type=int, default=30, help="blocks distilled in the estimate")
    parser.add_argument("--distill-steps", type=int, default=1000, help="distillation steps in the estimate")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=150.0,
        help="ASSUMED sustained GPU throughput for the FLOP-based estimate (bf16, TFLOP/s)",
    )
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from rehyat.config import ConversionConfig, HybridAttentionConfig
    from rehyat.flops import rehyat_attention_flops
    from rehyat.models.wan import WanDiT, WanDiTConfig
    from rehyat.training.distill import Distiller
    from rehyat.training.options import DistillOptions, TeacherSampling
    from rehyat.training.student import BlockStudent
    from rehyat.training.wandit_teacher import WanDiTTeacher
    from rehyat.video_latent import video_latent_shape

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    config = WanDiTConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers)
    model = WanDiT(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    latent = video_latent_shape(args.length, args.height, args.width, config.in_dim, exact=False)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randn(args.context, config.text_dim, generator=gen) * 0.1 for _ in range(2)]
    negative = torch.randn(args.context, config.text_dim, generator=gen) * 0.1
    steps = args.captured + 1
    teacher = WanDiTTeacher(model, prompts, negative, latent, TeacherSampling(steps=steps, cfg=args.cfg))
    conversion = ConversionConfig(attention=HybridAttentionConfig())  # paper: Tc=3, To=1, φ 256/256
    distiller = Distiller(
        teacher, conversion, DistillOptions(iterations=steps, holdout_prompts=0), 2, device=device
    )

    student_seconds: list[float] = []
    forward_marks: list[float] = []
    original_step = BlockStudent.train_step

    def timed_step(self, captured):
        _sync(device)
        start = time.perf_counter()
        loss = original_step(self, captured)
        _sync(device)
        student_seconds.append(time.perf_counter() - start)
        return loss

    BlockStudent.train_step = timed_step
    original_after = distiller._after_step

    def after(losses):
        _sync(device)
        forward_marks.append(time.perf_counter())
        original_after(losses)

    distiller._after_step = after
    _sync(device)
    baseline_mib = _rss_mib()
    _reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    distiller.train()
    BlockStudent.train_step = original_step
    peak = (
        (torch.cuda.max_memory_allocated(device) / 2**20)
        if device.type == "cuda"
        else _peak_mib() - baseline_mib
    )

    # Uncaptured teacher forward (same rows), for the teacher-only cost.
    rows = 2 if args.cfg != 1.0 else 1
    x = torch.randn(rows, *latent, generator=gen).to(device=device, dtype=dtype)
    context = torch.stack([prompts[0], negative][:rows]).to(device=device, dtype=dtype)
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        model(x, torch.full((rows,), 500.0, device=device), context)
        _sync(device)
        teacher_only = time.perf_counter() - t0

    per_forward = [b - a for a, b in zip([start, *forward_marks[:-1]], forward_marks, strict=True)][1:]
    per_forward = per_forward or [forward_marks[0] - start]
    layers = args.layers
    student_per_forward = sum(student_seconds[layers:]) / max(len(per_forward), 1)  # after warm-up
    captured_seconds = sum(per_forward) / len(per_forward)
    teacher_seconds = captured_seconds - student_per_forward
    student_per_block = student_per_forward / layers

    frames, tokens_per_frame = latent[1], (latent[2] // 2) * (latent[3] // 2)
    tokens = frames * tokens_per_frame
    teacher_flops_block = rows * block_flops(tokens, args.context, args.dim, args.ffn)
    student_fw = rehyat_attention_flops(
        rows,
        args.heads,
        frames,
        tokens_per_frame,
        args.dim // args.heads,
        chunk_frames=3,
        overlap_frames=1,
        feature_map=conversion.attention.feature_map,
    )
    student_flops_block = student_fw.softmax + 3 * (student_fw.feature_maps + student_fw.linear)
    full_captured = teacher_seconds * args.full_layers / layers + student_per_block * args.converted
    full_flops = teacher_flops_block * args.full_layers + student_flops_block * args.converted
    report = {
        "machine": {
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "workload": {
            "layers": layers,
            "dim": args.dim,
            "heads": args.heads,
            "ffn": args.ffn,
            "video": [args.length, args.height, args.width],
            "latent_frames": frames,
            "tokens_per_frame": tokens_per_frame,
            "tokens": tokens,
            "rows_per_forward": rows,
            "context_tokens": args.context,
            "phi": conversion.attention.to_dict(),
        },
        "measured": {
            "captured_forwards_timed": len(per_forward),
            "seconds_per_captured_forward": captured_seconds,
            "teacher_seconds_per_forward": teacher_seconds,
            "uncaptured_teacher_forward_seconds": teacher_only,
            "student_seconds_per_block": student_per_block,
            "captured_evaluations_per_hour": 3600.0 / captured_seconds,
            "peak_memory_mib_above_model": peak,
            "peak_memory_basis": "CUDA max_memory_allocated"
            if device.type == "cuda"
            else "VmHWM minus RSS after the model was built",
            "total_seconds": time.perf_counter() - start,
        },
        "estimate_wan2.1_1.3b": {
            "basis": (
                f"{args.distill_steps} distillation steps (one captured forward of cond+uncond rows "
                f"each; the paper does not state its step count), batch 1, {args.full_layers}-block "
                f"teacher at the measured size, {args.converted} blocks distilled; teacher time scaled "
                f"by blocks ({args.full_layers}/{layers}, embeddings/head included in the scaling: "
                f"slight over-estimate), student time per block × blocks"
            ),
            "hours_on_this_device": args.distill_steps * full_captured / 3600.0,
            "seconds_per_captured_forward_on_this_device": full_captured,
            "tflop_per_captured_forward": full_flops / 1e12,
            "gpu_hours_at_assumed_throughput": args.distill_steps
            * full_flops
            / (args.gpu_tflops * 1e12)
            / 3600.0,
            "assumed_gpu_tflops": args.gpu_tflops,
            "gpu_note": "no GPU measured here; GPU-hours = FLOPs / assumed sustained throughput",
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return report


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
