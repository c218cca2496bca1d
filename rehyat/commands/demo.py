"""``python -m rehyat demo`` — the whole story on the embedded teacher: no GPU, no downloads.

Loads the small Wan2.1-architecture teacher shipped with the package, converts it to ReHyAt,
distils φ against it with a small budget (or loads the shipped pre-distilled φ with
``--no-distill``), then generates a clip several times the teacher's training length with the
teacher and with ReHyAt (chunk by chunk, constant memory) from the same seed and prompt.

Writes into ``--output``: side_by_side.gif (teacher | ReHyAt), metrics.json (fidelity against the
teacher, the teacher's attention mass beyond the ReHyAt window, time and peak memory per clip
length for both), time_memory.png, and phi.safetensors (the φ used).
"""

from __future__ import annotations

import argparse
import json

NAME = "demo"
HELP = "teacher vs ReHyAt on the embedded teacher: distil, generate a long clip, GIF + metrics + plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` options."""
    parser.add_argument(
        "--prompt",
        default="a red circle and a blue square collide",
        help="what to generate, in the teacher's words (colours: red, green, blue, yellow, "
        "cyan, magenta; shapes: circle, square; 'and'; bounces/bounce/collide)",
    )
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help="frames to generate (default: 4 × the teacher's 16-frame training length)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the same for teacher and ReHyAt)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="Tc: frames per chunk (default 3)")
    parser.add_argument("--overlap-frames", type=int, default=None, help="To: overlap frames (default 1)")
    parser.add_argument("--distill-steps", type=int, default=30, help="φ distillation steps (small budget)")
    parser.add_argument(
        "--distill-trajectory-steps",
        type=int,
        default=10,
        help="denoising steps of each teacher trajectory φ is distilled on",
    )
    parser.add_argument("--no-distill", action="store_true", help="use the shipped pre-distilled φ")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the teacher's 20)")
    parser.add_argument(
        "--measure-lengths",
        default=None,
        help="comma-separated clip lengths of the time/memory sweep (default: 16,32,64 and --length)",
    )
    parser.add_argument("--output", default="rehyat_demo", help="folder for the GIF, metrics and plot")
    parser.add_argument("--teacher-dir", default=None, help="teacher files (default: the package's)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole metrics JSON at the end")


def run(args: argparse.Namespace) -> int:
    """Run the demo; a bad option raises ValueError (reported by the CLI)."""
    import torch

    from ..demo.pipeline import DemoConfig, run_demo

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    lengths = None
    if args.measure_lengths:
        try:
            lengths = tuple(int(v) for v in args.measure_lengths.split(","))
        except ValueError:
            raise ValueError(
                f"--measure-lengths must be comma-separated integers; got {args.measure_lengths!r}"
            ) from None
    config = DemoConfig(
        prompt=args.prompt,
        length=args.length,
        seed=args.seed,
        chunk_frames=args.chunk_frames,
        overlap_frames=args.overlap_frames,
        distill_steps=args.distill_steps,
        distill_trajectory_steps=args.distill_trajectory_steps,
        no_distill=args.no_distill,
        steps=args.steps,
        output=args.output,
        teacher_dir=args.teacher_dir,
        measure_lengths=lengths,
    )
    metrics = run_demo(config)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(summary(metrics))
    return 0


def summary(metrics: dict) -> str:
    """A few lines a person reads after the run."""
    f, g = metrics["fidelity_vs_teacher"], metrics["generation"]
    s = metrics["attention_temporal_structure"]["mean_over_blocks"]
    longest = max(m["frames"] for m in metrics["per_length"])
    rows = {m["model"]: m for m in metrics["per_length"] if m["frames"] == longest}

    def mem(row):
        return "n/a" if row["working_memory_mib"] is None else f"{row['working_memory_mib']:.0f} MiB"

    times = metrics["length"] / metrics["teacher_training_length"]
    teacher, rehyat = rows["teacher"], rows["rehyat"]
    return "\n".join(
        [
            f"{metrics['length']} frames ({times:.1f}× the teacher's training length), "
            f"Tc={metrics['chunk_frames']}, To={metrics['overlap_frames']}",
            f"teacher attention mass beyond Tc+To frames: {s['beyond_window']:.1%} "
            f"(past outside the softmax window {s['past_outside_softmax']:.1%}, "
            f"future {s['future_outside_chunk']:.1%})",
            f"fidelity vs teacher: PSNR {f['psnr_db']:.2f} dB, SSIM {f['ssim']:.3f}",
            "prompt colours found in "
            + ", ".join(
                f"{name} {_mean(d['prompt_colours']):.0%}" for name, d in metrics["shape_detection"].items()
            )
            + " of frames (other colours: "
            + ", ".join(
                f"{name} {_mean(d['other_colours']):.0%}" for name, d in metrics["shape_detection"].items()
            )
            + ")",
            f"generation: teacher {g['teacher']['seconds']:.1f} s, ReHyAt {g['rehyat']['seconds']:.1f} s",
            f"one step at {longest} frames: teacher {teacher['seconds']:.2f} s / {mem(teacher)}, "
            f"ReHyAt {rehyat['seconds']:.2f} s / {mem(rehyat)}",
        ]
    )


def _mean(shares: dict[str, float]) -> float:
    return sum(shares.values()) / len(shares) if shares else 0.0
