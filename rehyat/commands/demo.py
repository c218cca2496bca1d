"""``python -m rehyat demo`` — the whole story on the embedded teacher: no GPU, no downloads.

Loads the small Wan2.1-architecture teacher shipped with the package and its shipped ReHyAt student
(the paper's two stages: φ distilled against the teacher, then a flow-matching fine-tune; ``--retrain``
runs both live instead, with progress bars and a stated time), then generates, from the same seed and
prompt, a clip several times the teacher's training length and one of the training length with the
teacher, the student and the stage-1-only model (chunk by chunk, constant memory).

Writes into ``--output``: side_by_side.gif (teacher | student | stage 1, labelled, every panel
≥ 384 px; .mp4 too when PyAV is installed), side_by_side_<n>_frames.gif (the training length),
metrics.json (fidelity against the teacher; seam ratio, blank frames, presence per shape, kind
accuracy, spurious colours and motion continuity per panel and length; the teacher's attention mass
beyond the ReHyAt window; time and peak memory per clip length, medians over repeats),
time_memory.png, and phi.safetensors (the φ used).
"""

from __future__ import annotations

import argparse
import json

NAME = "demo"
HELP = "teacher vs its ReHyAt student on the embedded teacher: long clips side by side, metrics, plot"


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
        type=_int_in(1, 4096),
        default=None,
        help="frames to generate (default: 4 × the teacher's 16-frame training length)",
    )
    parser.add_argument(
        "--seed", type=_int_in(0), default=0, help="noise seed (the same for every panel)"
    )
    parser.add_argument(
        "--chunk-frames",
        type=_int_in(1),
        default=None,
        help="Tc: frames per chunk (default: the shipped student's, 3; other values need --retrain)",
    )
    parser.add_argument(
        "--overlap-frames",
        type=_int_in(0),
        default=None,
        help="To: overlap frames (default: the shipped student's, 1; other values need --retrain)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train the student live (stage 1 φ distillation + stage 2 fine-tune, progress bars; the time is "
        "stated before it starts) instead of using the shipped one",
    )
    parser.add_argument(
        "--distill-steps", type=_int_in(1), default=None, help="with --retrain: stage-1 φ distillation steps"
    )
    parser.add_argument(
        "--distill-trajectory-steps",
        type=_int_in(1, 1000),
        default=None,
        help="with --retrain: denoising steps of each teacher trajectory φ is distilled on",
    )
    parser.add_argument(
        "--finetune-steps",
        type=_int_in(0),
        default=None,
        help="with --retrain: stage-2 fine-tune steps (0: none)",
    )
    parser.add_argument(
        "--finetune-data",
        choices=("trajectories", "clips"),
        default=None,
        help="with --retrain: stage-2 inputs — the student's own sampling trajectories (the shipped "
        "recipe) or noised generator clips (≈ 3× faster, rougher seams)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="use the shipped student without training (the default; kept for compatibility)",
    )
    parser.add_argument(
        "--student-dir",
        default=None,
        help="folder of the student's files (teacher_phi.safetensors, student_lora.safetensors; default: "
        "--teacher-dir or the package's; a --retrain run's --output holds them too)",
    )
    parser.add_argument(
        "--steps", type=_int_in(1, 1000), default=None, help="denoising steps (default: the teacher's 20)"
    )
    parser.add_argument(
        "--measure-lengths",
        default=None,
        help="comma-separated clip lengths of the time/memory sweep (default: 16,32,64 and --length)",
    )
    parser.add_argument(
        "--repeats",
        type=_int_in(1, 100),
        default=5,
        help="timed runs per model and length of the time/memory sweep (the median is reported)",
    )
    parser.add_argument(
        "--output",
        default="rehyat_demo",
        help="folder for the videos, metrics and plot (created; the demo's own files in it are replaced)",
    )
    parser.add_argument("--teacher-dir", default=None, help="teacher files (default: the package's)")
    parser.add_argument(
        "--threads", type=_int_in(1), default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole metrics JSON at the end")


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]`` (argparse names the option in its error)."""
    allowed = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {value}")
        return value

    return parse


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
            lengths = ()
        if not lengths or any(not 1 <= n <= 4096 for n in lengths):
            raise ValueError(
                "--measure-lengths must be comma-separated integers in [1, 4096]; "
                f"got {args.measure_lengths!r}"
            )
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
        retrain=args.retrain,
        finetune_steps=args.finetune_steps,
        finetune_data=args.finetune_data,
        student_dir=args.student_dir,
        repeats=args.repeats,
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
    f1 = metrics.get("fidelity_vs_teacher_stage1", {})
    detection = metrics["shape_detection"]
    s = metrics["attention_temporal_structure"]["mean_over_blocks"]
    longest = max(m["frames"] for m in metrics["per_length"])
    rows = {m["model"]: m for m in metrics["per_length"] if m["frames"] == longest}

    def mem(row):
        return "n/a" if row["working_memory_mib"] is None else f"{row['working_memory_mib']:.0f} MiB"

    times = metrics["length"] / metrics["teacher_training_length"]
    teacher, rehyat = rows["teacher"], rows["rehyat"]
    lines = [
        f"{metrics['length']} frames ({times:.1f}× the teacher's training length), "
        f"Tc={metrics['chunk_frames']}, To={metrics['overlap_frames']}",
        f"teacher attention mass beyond Tc+To frames: {s['beyond_window']:.1%} "
        f"(past outside the softmax window {s['past_outside_softmax']:.1%}, "
        f"future {s['future_outside_chunk']:.1%})",
        f"fidelity vs teacher: student PSNR {_num(f['psnr_db'], '.2f')} dB, SSIM {_num(f['ssim'], '.3f')}"
        + (
            f"; stage 1 only PSNR {_num(f1['psnr_db'], '.2f')} dB, SSIM {_num(f1['ssim'], '.3f')}"
            if f1
            else ""
        ),
        "prompt colours found in "
        + ", ".join(
            f"{_shown(name)} {_mean(d['prompt_colours']):.0%}" for name, d in detection.items()
        )
        + " of frames (other colours: "
        + ", ".join(
            f"{_shown(name)} {_mean(d['other_colours']):.0%}" for name, d in detection.items()
        )
        + ")",
    ]
    lines += panel_table(metrics.get("panels", {}))
    lines += [
        "generation: "
        + ", ".join(f"{_shown(name)} {row['seconds']:.1f} s" for name, row in g.items()),
        f"one step at {longest} frames (median of {teacher.get('repeats', 1)}): teacher "
        f"{teacher['seconds']:.2f} s / {mem(teacher)}, ReHyAt {rehyat['seconds']:.2f} s / {mem(rehyat)}",
    ]
    return "\n".join(lines)


COLUMNS = (  # (heading, ClipScore key, format, key of its target in "passes")
    ("seam", "seam_ratio", ".2f", "seam_ratio"),
    ("blank", "blank_frames", ".0%", "blank"),
    ("presence", "min_presence", ".0%", "every_colour_present"),
    ("kind", "kind_correct", ".0%", "kind"),
    ("spurious", "spurious_frames", ".0%", "spurious"),
    ("continuity", "continuous_pairs", ".0%", "continuous"),
)


def panel_table(panels: dict) -> list[str]:
    """The per-panel content scores as a small table, one block per clip length."""
    if not panels:
        return []
    lines = ["what a creator judges (presence: the least present prompted shape; *: misses the target)"]
    lengths = sorted({int(n) for by_length in panels.values() for n in by_length}, reverse=True)
    for length in lengths:
        lines.append(f"  {f'{length} frames':14s}" + "".join(f"{h:>11s}" for h, *_ in COLUMNS))
        for name, by_length in panels.items():
            entry = by_length.get(str(length))
            if entry is None:
                continue
            passes = entry.get("passes", {})
            cells = []
            for _, key, fmt, target in COLUMNS:
                miss = passes.get(target) is False
                cells.append(f"{_num(entry.get(key), fmt) + ('*' if miss else ' '):>11s}")
            lines.append(f"  {name:14s}" + "".join(cells))
    return lines


def _shown(name: str) -> str:
    """Panel names as printed: the pinned metrics key "rehyat" is the student."""
    return "student" if name == "rehyat" else name


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _mean(shares: dict[str, float]) -> float:
    return sum(shares.values()) / len(shares) if shares else 0.0
