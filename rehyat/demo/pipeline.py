"""The whole ReHyAt story on the embedded teacher, on a CPU, in minutes, with no downloads.

1. check every option (before any work), load the shipped teacher (a small Wan2.1-architecture DiT +
   its text encoder);
2. take its ReHyAt student — the shipped one (stage-1 φ + stage-2 LoRA, :mod:`rehyat.student`), or,
   with ``retrain``, both stages trained live — and the stage-1-only model beside it;
3. measure how much of the teacher's softmax attention mass lies beyond the ReHyAt window;
4. generate, from the same seed and prompt, a clip several times the teacher's training length and
   one of the training length with the teacher (softmax over all frames), the student and stage 1
   (recurrent: chunk after chunk, constant memory), and judge every clip with the teacher's evaluator;
5. write ``side_by_side.gif`` (teacher | student | stage 1, labelled, every panel ≥ 384 px; and
   ``side_by_side.mp4`` when PyAV is installed), the same at the training length
   (``side_by_side_<n>_frames.gif``), ``metrics.json`` (fidelity against the teacher, the content
   scores per panel and length, time and peak memory per length — medians over repeats) and
   ``time_memory.png``, plus the φ used (``phi.safetensors``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write_bytes
from ..config import require_int
from ..metrics import psnr_clip, psnr_per_frame, ssim_clip, temporal_flicker
from ..models.wan_rehyat import save_phi
from ..student.recipe import STAGE2_DATA
from ..teacher.analysis import attention_temporal_structure
from ..teacher.evaluate import detect, score_clip
from ..teacher.model import ASSETS, SamplingConfig, Teacher, load_teacher
from ..teacher.shapes import COLOURS
from ..teacher.text import parse_prompt
from .media import plot_time_memory
from .memory import measure_lengths_in_child
from .options import check_output_folder, check_prompt
from .panels import LABELS, generate_panels, judge_panels, write_panel_videos
from .students import obtain_students, plan_student

PHI_FILE = "teacher_phi.safetensors"  # shipped stage-1 φ, next to the teacher
DEFAULT_PROMPT = "a red circle and a blue square collide"
OUTPUT_NAMES = ("side_by_side", "metrics.json", "time_memory.png", "phi.safetensors")


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``python -m rehyat demo`` (None: the documented default).

    Attributes:
        prompt: what to generate, in the teacher's words.
        length: frames to generate (default: 4 × the teacher's training length); a clip of the training
            length is generated too.
        seed: noise seed (same for every panel).
        chunk_frames, overlap_frames: Tc and To (default: the shipped student's; other values need
            ``retrain``).
        distill_steps: stage-1 φ distillation steps of ``retrain`` (default: the recipe's).
        distill_prompts: generator prompts the teacher is sampled on in stage 1 of ``retrain``.
        distill_trajectory_steps: denoising steps of each teacher trajectory of stage 1 of ``retrain``.
        no_distill: use the shipped student (the default now; kept for compatibility).
        steps: denoising steps (default: the teacher's).
        output: folder for the artefacts (created; the demo's own files in it are replaced).
        teacher_dir: teacher files (default: the package's).
        measure_lengths: clip lengths of the time/memory sweep (default: 1×, 2×, 4× training, and ``length``).
        retrain: train both stages of the student live (:func:`rehyat.student.train_student`).
        finetune_steps: stage-2 fine-tune steps of ``retrain`` (default: the recipe's; 0: stage 1 only).
        finetune_data: stage-2 inputs of ``retrain``, "trajectories" or "clips" (default: the recipe's).
        student_dir: the student's files (default: ``teacher_dir`` or the package's).
        repeats: timed runs per model and length in the time/memory sweep (the median is reported).
    """

    prompt: str = DEFAULT_PROMPT
    length: int | None = None
    seed: int = 0
    chunk_frames: int | None = None
    overlap_frames: int | None = None
    distill_steps: int | None = None
    distill_prompts: int | None = None
    distill_trajectory_steps: int | None = None
    no_distill: bool = False
    steps: int | None = None
    output: str = "rehyat_demo"
    teacher_dir: str | None = None
    measure_lengths: tuple[int, ...] | None = None
    retrain: bool = False
    finetune_steps: int | None = None
    finetune_data: str | None = None
    student_dir: str | None = None
    repeats: int = 5

    def __post_init__(self) -> None:
        if self.length is not None:
            require_int("length", self.length, low=1, high=4096)
        require_int("seed", self.seed, low=0)
        optional = (
            ("distill_steps", 1, None),
            ("distill_prompts", 2, None),
            ("distill_trajectory_steps", 1, 1000),
            ("steps", 1, 1000),
            ("finetune_steps", 0, None),
            ("chunk_frames", 1, None),
            ("overlap_frames", 0, None),
        )
        for name, low, high in optional:
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), low=low, high=high)
        require_int("repeats", self.repeats, low=1, high=100)
        if self.finetune_data is not None and self.finetune_data not in STAGE2_DATA:
            raise ValueError(f"finetune_data must be one of {STAGE2_DATA}; got {self.finetune_data!r}")
        if self.measure_lengths is not None:
            for n in self.measure_lengths:
                require_int("measure_lengths[i]", n, low=1, high=4096)


def run_demo(config: DemoConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns the metrics written to ``<output>/metrics.json``.

    Every option is checked before any work (one-line ``ValueError`` naming the option).
    """
    output = check_output_folder(config.output)
    teacher = load_teacher(config.teacher_dir)
    folder = Path(config.teacher_dir) if config.teacher_dir else ASSETS
    train_frames = teacher.config.clip.frames
    length = config.length or 4 * train_frames
    check_prompt(config.prompt, teacher.text_encoder.config.max_shapes)
    sampling = SamplingConfig(
        **{**asdict(teacher.config.sampling), **({"steps": config.steps} if config.steps else {})}
    )
    plan = plan_student(config, train_frames, config.student_dir or folder)
    earlier = _check_output_names(output, retrain=plan.retrain)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--output {output}: cannot create the folder ({err.strerror or err}) — choose another place"
        ) from None
    if earlier:
        log(f"replacing the earlier demo output in {output} ({', '.join(earlier)})")
    log(f"teacher: {_describe(teacher)}")

    models, student = obtain_students(
        teacher, plan, save_to=output if plan.retrain else None, progress=progress, log=log
    )
    if plan.retrain:
        distillation = _jsonable(student["report"].get("stage1", {}))
        trained = (distillation.get("conversion") or {}).get("attention", {}).get("overlap_frames")
        if trained is not None and trained != plan.overlap_frames:  # φ trained at one To, sampled at another
            distillation["trained_conversion"] = distillation.pop("conversion")
    else:
        distillation = {"source": str(plan.folder / PHI_FILE), "stage": "stage 1 (shipped)"}
    save_phi(
        models["stage1"].dit,
        output / "phi.safetensors",
        training={"stage": "distill", **_jsonable(distillation)},
    )

    log("measuring the teacher's attention over frames …")
    structure = attention_temporal_structure(
        teacher, chunk_frames=plan.chunk_frames, overlap_frames=plan.overlap_frames, seeds=(11, 12)
    )

    lengths = [length] + ([train_frames] if train_frames != length else [])
    clips, seconds = generate_panels(
        teacher, models, config.prompt, config.seed, lengths, sampling, progress=progress
    )
    named = {"teacher": clips[length]["teacher"], "rehyat": clips[length]["student"],
             "stage1": clips[length]["stage1"]}
    batch = 2 if sampling.guidance != 1 else 1
    generation = {
        name: {"seconds": seconds[length][panel], "model_calls": sampling.steps, "batch": batch}
        for name, panel in (("teacher", "teacher"), ("rehyat", "student"), ("stage1", "stage1"))
    }
    log("judging every panel (the teacher's evaluator) …")
    panels = judge_panels(clips, config.prompt, teacher.config.clip, plan.chunk_frames)

    sweep = sorted(set(config.measure_lengths or (train_frames, 2 * train_frames, 4 * train_frames, length)))
    log(f"timing one model evaluation per clip length (fresh process, median of {config.repeats}) …")
    measurements = measure_lengths(
        folder, output / "phi.safetensors", sweep, config.prompt, log, repeats=config.repeats
    )

    log("writing the side-by-side videos …")
    videos = {}
    caption = f"ReHyAt Tc={plan.chunk_frames} To={plan.overlap_frames}, seed {config.seed}"
    for n in lengths:
        stem = "side_by_side" if n == length else f"side_by_side_{n}_frames"
        videos[str(n)] = write_panel_videos(
            clips[n], output / stem, training_frames=train_frames, caption=caption, log=log
        )

    metrics = {
        "prompt": config.prompt,
        "seed": config.seed,
        "length": length,
        "teacher_training_length": train_frames,
        "chunk_frames": plan.chunk_frames,
        "overlap_frames": plan.overlap_frames,
        "sampling": asdict(sampling),
        "teacher": {"config": teacher.config.to_dict(), "training": getattr(teacher, "training_info", {})},
        "distillation": distillation,
        "student": _jsonable(student),
        "attention_temporal_structure": structure,
        "fidelity_vs_teacher": fidelity(named["teacher"], named["rehyat"], train_frames),
        "fidelity_vs_teacher_stage1": fidelity(named["teacher"], named["stage1"], train_frames),
        "shape_detection": {name: detection_summary(clip, config.prompt) for name, clip in named.items()},
        "content": {
            name: score_clip(clip, config.prompt, teacher.config.clip, plan.chunk_frames).to_dict()
            for name, clip in named.items()
        },
        "panels": panels,
        "panel_labels": {**LABELS, "rehyat": "the student (panel 'student'), in the keys kept from before"},
        "lengths": lengths,
        "generation": generation,
        "generation_per_length": {str(n): seconds[n] for n in lengths},
        "per_length": measurements,
        "timing_repeats": config.repeats,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "videos": videos,
        "mp4": videos[str(length)]["mp4"],
    }
    if metrics["mp4"] is None:
        metrics["mp4_skipped"] = "PyAV (av) is not installed"
    threads = torch.get_num_threads()
    plot_time_memory(
        measurements,
        output / "time_memory.png",
        f"one denoising step, {teacher.config.clip.size}×{teacher.config.clip.size} px, "
        f"{threads} CPU thread{'s' if threads > 1 else ''}, median of {config.repeats} runs",
    )
    _write_json(output / "metrics.json", _jsonable(metrics))
    log(
        "wrote "
        + ", ".join(str(output / v["gif"]) for v in videos.values())
        + f", {output / 'metrics.json'}, {output / 'time_memory.png'}"
    )
    return metrics


# --- steps ------------------------------------------------------------------------------------------


def measure_lengths(
    teacher_dir: str | os.PathLike[str],
    phi: str | os.PathLike[str],
    lengths: list[int],
    prompt: str,
    log,
    *,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Median seconds and working memory of one denoising-step model evaluation per length, both models.

    Measured in a fresh process (see :mod:`rehyat.demo.memory`) over ``repeats`` runs, teacher and
    ReHyAt alternating; the child's progress is logged as it comes.
    """
    rows = measure_lengths_in_child(
        {
            "teacher_dir": str(teacher_dir),
            "phi": str(phi),
            "lengths": lengths,
            "threads": torch.get_num_threads(),
            "prompt": prompt,
            "repeats": repeats,
        },
        log=log,
    )
    for row in rows:
        memory = row["working_memory_mib"]
        log(
            f"  {row['model']:8s} {row['frames']:4d} frames: {row['seconds']:7.3f} s per evaluation "
            f"(median of {row.get('repeats', 1)}), {'n/a' if memory is None else f'{memory:.1f} MiB'}"
        )
    return rows


def fidelity(teacher_clip: Tensor, rehyat_clip: Tensor, train_frames: int) -> dict[str, Any]:
    """PSNR / SSIM of ReHyAt against the teacher, overall, within and beyond the training length."""
    a, b = _to_frames(teacher_clip), _to_frames(rehyat_clip)
    result = {
        "psnr_db": psnr_clip(b, a),
        "ssim": ssim_clip(b, a),
        "psnr_per_frame_db": [_finite(v) for v in psnr_per_frame(b, a).tolist()],
        "temporal_flicker": {"teacher": temporal_flicker(a), "rehyat": temporal_flicker(b)},
    }
    n = min(train_frames, a.shape[0])
    result["psnr_db_first_training_length"] = psnr_clip(b[:n], a[:n])
    if a.shape[0] > n:
        result["psnr_db_beyond_training_length"] = psnr_clip(b[n:], a[n:])
    return {k: _finite(v) if isinstance(v, float) else v for k, v in result.items()}


def detection_summary(pixels: Tensor, prompt: str) -> dict[str, Any]:
    """Share of frames in which each colour's shape is detected — the prompt's and the others
    (the teacher's evaluator's detector, :func:`rehyat.teacher.evaluate.detect`)."""
    found, _ = detect(pixels, list(COLOURS))
    wanted = {colour for colour, _ in parse_prompt(prompt, len(COLOURS)).shapes}
    share = {c: sum(frame[c] is not None for frame in found) / len(found) for c in COLOURS}
    return {
        "prompt_colours": {c: v for c, v in share.items() if c in wanted},
        "other_colours": {c: v for c, v in share.items() if c not in wanted},
    }


# --- helpers ----------------------------------------------------------------------------------------


def _to_frames(pixels: Tensor) -> Tensor:
    """``(3, T, H, W)`` in [-1, 1] → ``(T, H, W, 3)`` in [0, 1]."""
    return ((pixels.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)


def _describe(teacher: Teacher) -> str:
    c = teacher.config
    params = sum(p.numel() for p in teacher.dit.parameters())
    info = getattr(teacher, "training_info", {})
    steps = info.get("steps_done")
    return (
        f"Wan2.1-architecture DiT, {c.dit.num_layers} blocks × {c.dit.dim} wide, "
        f"{params / 1e6:.2f} M parameters, "
        f"{c.clip.frames}-frame {c.clip.size}×{c.clip.size} clips"
        + (f", trained {steps} steps" if steps else "")
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON: tuples → lists, tensors → lists, inf / NaN → None, other objects → None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, bool | int | str) or value is None:
        return value
    return None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _check_output_names(output: Path, *, retrain: bool) -> list[str]:
    """The demo's files already in ``output`` (replaced by this run); a link or folder there is refused."""
    from ..student import LORA_FILE

    if not output.is_dir():
        return []
    names = set(OUTPUT_NAMES) | ({PHI_FILE, LORA_FILE} if retrain else set())
    found = []
    for entry in sorted(output.iterdir()):
        if not any(entry.name == n or entry.name.startswith(n + "_") or entry.name.startswith(n + ".")
                   for n in names) or entry.name.startswith("."):
            continue
        if entry.is_symlink() or not entry.is_file():
            raise ValueError(
                f"--output {output}: {entry.name} is {'a link' if entry.is_symlink() else 'a folder'}; the "
                "demo replaces only its own files there — move it away or choose another --output"
            )
        found.append(entry.name)
    return found
