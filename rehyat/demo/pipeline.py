"""The whole ReHyAt story on the embedded teacher, on a CPU, in minutes, with no downloads.

1. load the shipped teacher (a small Wan2.1-architecture DiT + its text encoder);
2. convert a copy of it to ReHyAt (every block, causal) and distil φ against the softmax teacher
   with a small budget (:mod:`rehyat.training.distill`) — or load the shipped pre-distilled φ;
3. measure how much of the teacher's softmax attention mass lies beyond the ReHyAt window;
4. generate a clip several times the teacher's training length from the same seed and prompt with
   the teacher (softmax over all frames) and with ReHyAt (recurrent: chunk after chunk, constant
   memory);
5. write ``side_by_side.gif`` (and ``side_by_side.mp4`` when PyAV is installed), ``metrics.json``
   (fidelity against the teacher, time and peak memory per length for both) and
   ``time_memory.png``, plus the φ used (``phi.safetensors``).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ConversionConfig, HybridAttentionConfig, require_int
from ..metrics import psnr_clip, psnr_per_frame, ssim_clip, temporal_flicker
from ..models.wan_rehyat import conversion_config, convert, forward_recurrent, load_phi, save_phi
from ..teacher.analysis import attention_temporal_structure
from ..teacher.distillation import distil_on_teacher, generator_prompts
from ..teacher.evaluate import detect, score_clip
from ..teacher.model import ASSETS, SamplingConfig, Teacher, load_teacher
from ..teacher.shapes import COLOURS
from ..teacher.text import parse_prompt
from .media import plot_time_memory, side_by_side_frames, write_gif, write_mp4
from .memory import measure_call, measure_lengths_in_child

PHI_FILE = "teacher_phi.safetensors"  # shipped pre-distilled φ, next to the teacher
DEFAULT_PROMPT = "a red circle and a blue square collide"


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``python -m rehyat demo`` (None: the documented default).

    Attributes:
        prompt: what to generate, in the teacher's words.
        length: frames to generate (default: 4 × the teacher's training length).
        seed: noise seed (same for teacher and ReHyAt).
        chunk_frames, overlap_frames: Tc and To (default: the shipped φ's, else the library's).
        distill_steps: φ optimiser steps (one per captured teacher forward).
        distill_prompts: generator prompts the teacher is sampled on during distillation.
        distill_trajectory_steps: denoising steps of each teacher trajectory φ is distilled on (every
            step's forward is captured).
        no_distill: use the shipped pre-distilled φ (starts generating at once).
        steps: denoising steps (default: the teacher's).
        output: folder for the artefacts (created; files in it are replaced).
        teacher_dir: teacher files (default: the package's).
        measure_lengths: clip lengths of the time/memory sweep (default: 1×, 2×, 4× training, and ``length``).
    """

    prompt: str = DEFAULT_PROMPT
    length: int | None = None
    seed: int = 0
    chunk_frames: int | None = None
    overlap_frames: int | None = None
    distill_steps: int = 30
    distill_prompts: int = 8
    distill_trajectory_steps: int = 10
    no_distill: bool = False
    steps: int | None = None
    output: str = "rehyat_demo"
    teacher_dir: str | None = None
    measure_lengths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.length is not None:
            require_int("length", self.length, low=1, high=4096)
        require_int("seed", self.seed, low=0)
        require_int("distill_steps", self.distill_steps, low=1)
        require_int("distill_prompts", self.distill_prompts, low=2)
        require_int("distill_trajectory_steps", self.distill_trajectory_steps, low=1, high=1000)
        if self.steps is not None:
            require_int("steps", self.steps, low=1, high=1000)
        for name in ("chunk_frames", "overlap_frames"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), low=1 if name == "chunk_frames" else 0)
        if self.measure_lengths is not None:
            for n in self.measure_lengths:
                require_int("measure_lengths[i]", n, low=1, high=4096)


def run_demo(config: DemoConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns the metrics written to ``<output>/metrics.json``."""
    from tqdm import tqdm

    teacher = load_teacher(config.teacher_dir)
    folder = Path(config.teacher_dir) if config.teacher_dir else ASSETS
    train_frames = teacher.config.clip.frames
    length = config.length or 4 * train_frames
    sampling = SamplingConfig(
        **{**asdict(teacher.config.sampling), **({"steps": config.steps} if config.steps else {})}
    )
    teacher.encode([config.prompt])  # refuses unknown words before any work
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    log(f"teacher: {_describe(teacher)}")

    student = copy.deepcopy(teacher)
    if config.no_distill:
        phi_path = folder / PHI_FILE
        if not phi_path.is_file():
            raise ValueError(f"no_distill: no pre-distilled φ at {phi_path}; run without --no-distill")
        load_phi(student.dit, phi_path)
        attention = conversion_config(student.dit).attention
        for name in ("chunk_frames", "overlap_frames"):
            wanted = getattr(config, name)
            if wanted is not None and wanted != getattr(attention, name):
                raise ValueError(
                    f"{name}: the shipped φ were distilled with {name}={getattr(attention, name)}; "
                    f"use that value or drop --no-distill to distil φ for {name}={wanted}"
                )
        distillation: dict[str, Any] = {"source": str(phi_path)}
        log(f"φ: pre-distilled ({phi_path.name}), Tc={attention.chunk_frames}, To={attention.overlap_frames}")
    else:
        defaults = HybridAttentionConfig()
        attention = HybridAttentionConfig(
            chunk_frames=config.chunk_frames or defaults.chunk_frames,
            overlap_frames=defaults.overlap_frames
            if config.overlap_frames is None
            else config.overlap_frames,
        )
        conversion = ConversionConfig(attention=attention)
        bar = tqdm(total=config.distill_steps, desc="distilling φ", disable=not progress, unit="step")
        hybrid, distillation = distill_phi(
            teacher,
            conversion,
            config,
            sampling,
            on_step=lambda step, total, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")),
        )
        bar.close()
        convert(student.dit, conversion, hybrid)
    save_phi(
        student.dit, output / "phi.safetensors", training={"stage": "distill", **_jsonable(distillation)}
    )

    log("measuring the teacher's attention over frames …")
    structure = attention_temporal_structure(
        teacher, chunk_frames=attention.chunk_frames, overlap_frames=attention.overlap_frames, seeds=(11, 12)
    )

    clips, generation = {}, {}
    for name, velocity in (("teacher", None), ("rehyat", _recurrent(student))):
        bar = tqdm(
            total=sampling.steps,
            desc=f"generating {length} frames ({name})",
            disable=not progress,
            unit="step",
        )
        pixels, seconds, _ = measure_call(
            lambda v=velocity, b=bar: teacher.generate(
                config.prompt,
                length,
                config.seed,
                velocity=v,
                sampling=sampling,
                callback=lambda i, x: b.update(1),
            )
        )
        bar.close()
        clips[name] = pixels
        generation[name] = {
            "seconds": seconds,
            "model_calls": sampling.steps,
            "batch": 2 if sampling.guidance != 1 else 1,
        }

    lengths = sorted(
        set(config.measure_lengths or (train_frames, 2 * train_frames, 4 * train_frames, length))
    )
    log("timing one model evaluation per clip length (fresh process) …")
    measurements = measure_lengths(folder, output / "phi.safetensors", lengths, config.prompt, log)

    metrics = {
        "prompt": config.prompt,
        "seed": config.seed,
        "length": length,
        "teacher_training_length": train_frames,
        "chunk_frames": attention.chunk_frames,
        "overlap_frames": attention.overlap_frames,
        "sampling": asdict(sampling),
        "teacher": {"config": teacher.config.to_dict(), "training": getattr(teacher, "training_info", {})},
        "distillation": _jsonable(distillation),
        "attention_temporal_structure": structure,
        "fidelity_vs_teacher": fidelity(clips["teacher"], clips["rehyat"], train_frames),
        "shape_detection": {name: detection_summary(clip, config.prompt) for name, clip in clips.items()},
        "content": {
            name: score_clip(clip, config.prompt, teacher.config.clip, attention.chunk_frames).to_dict()
            for name, clip in clips.items()
        },
        "generation": generation,
        "per_length": measurements,
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    images = side_by_side_frames(
        [clips["teacher"], clips["rehyat"]],
        ["teacher (softmax)", f"ReHyAt Tc={attention.chunk_frames} To={attention.overlap_frames}"],
        training_frames=train_frames,
    )
    write_gif(images, output / "side_by_side.gif")
    mp4 = write_mp4(images, output / "side_by_side.mp4")
    metrics["mp4"] = None if mp4 is None else mp4.name
    plot_time_memory(
        measurements,
        output / "time_memory.png",
        f"one denoising step, {teacher.config.clip.size}×{teacher.config.clip.size} px, "
        f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''}",
    )
    _write_json(output / "metrics.json", metrics)
    log(f"wrote {output / 'side_by_side.gif'}, {output / 'metrics.json'}, {output / 'time_memory.png'}")
    return metrics


# --- steps ------------------------------------------------------------------------------------------


def distill_phi(
    teacher: Teacher, conversion: ConversionConfig, config: DemoConfig, sampling: SamplingConfig, on_step=None
) -> tuple[dict, dict[str, Any]]:
    """Stage-1 distillation of φ for every block on teacher trajectories at the training length."""
    return distil_on_teacher(
        teacher,
        conversion,
        steps=config.distill_steps,
        prompts=generator_prompts(config.distill_prompts),
        sampling=sampling,
        trajectory_steps=config.distill_trajectory_steps,
        on_step=on_step,
    )


def measure_lengths(
    teacher_dir: str | os.PathLike[str], phi: str | os.PathLike[str], lengths: list[int], prompt: str, log
) -> list[dict[str, Any]]:
    """Seconds and working memory of one denoising-step model evaluation per length, both models.

    Measured in a fresh process (see :mod:`rehyat.demo.memory`), teacher and ReHyAt alternating.
    """
    rows = measure_lengths_in_child(
        {
            "teacher_dir": str(teacher_dir),
            "phi": str(phi),
            "lengths": lengths,
            "threads": torch.get_num_threads(),
            "prompt": prompt,
        }
    )
    for row in rows:
        memory = row["working_memory_mib"]
        log(
            f"  {row['model']:8s} {row['frames']:4d} frames: {row['seconds']:7.3f} s per evaluation, "
            f"{'n/a' if memory is None else f'{memory:.1f} MiB'}"
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


def _recurrent(student: Teacher):
    return lambda x, t, context: forward_recurrent(student.dit, x, t, context)


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
    return json.loads(
        json.dumps(value, default=lambda o: None, allow_nan=True)
        .replace("NaN", "null")
        .replace("-Infinity", "null")
        .replace("Infinity", "null")
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
