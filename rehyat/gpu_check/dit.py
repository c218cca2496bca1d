"""dit: one whole-DiT forward at real shape (random weights) — softmax vs ReHyAt recurrent vs parallel.

Every (length, case) builds a fresh random-weight :class:`~rehyat.models.wan.WanDiT`
(:func:`rehyat.profiling.wandit_runner`; bf16 on CUDA, fp32 on CPU; φ fp32) and measures it with
:func:`rehyat.profiling.measure_runner`: on CUDA, CUDA events and ``max_memory_allocated`` after a
reset (peak and working = peak − allocated before the evaluation); on CPU the process's RSS high
water mark (one process for every case, so CPU memory figures are not per case). Each case also
carries the analytic FLOPs (:func:`rehyat.profiling.model_flops`) and the planner's working memory
(:func:`rehyat.planning.evaluation_memory`), so one GPU run checks the planner too.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch

from ..planning.memory import evaluation_memory
from ..profiling import LatentGrid, ReHyAtCase, SoftmaxCase, measure_runner, model_flops, wandit_runner
from ..video_latent import latent_frame_count
from .config import GpuCheckConfig
from .guard import Deadline
from .speed import activation_dtype

MIB = 2**20


def dit_cases(config: GpuCheckConfig) -> dict[str, SoftmaxCase | ReHyAtCase]:
    """The three configurations: softmax, ReHyAt recurrent (all blocks), parallel (some blocks)."""
    kw = dict(chunk_frames=config.chunk_frames, overlap_frames=config.overlap_frames,
              feature_map=config.feature_map)
    return {"softmax": SoftmaxCase(), "rehyat_recurrent": ReHyAtCase(form="recurrent", **kw),
            f"rehyat_parallel_{config.dit_parallel_blocks}_blocks": ReHyAtCase(
                form="parallel", converted_blocks=config.dit_parallel_blocks, **kw)}


def run_cases(config: GpuCheckConfig, emit: Callable[[dict[str, Any]], None],
              deadline: Deadline) -> str | None:
    """Measure every (length, case); returns a skip reason when the deadline stopped it."""
    dtype = activation_dtype(config.device)
    element = torch.finfo(dtype).bits // 8
    shape = config.dit_shape
    for video_frames in config.dit_video_frames:
        latent = LatentGrid(latent_frame_count(video_frames), *config.dit_latent_hw)
        for name, case in dit_cases(config).items():
            if deadline.expired():
                return f"time guard: stopped before {name} at {video_frames} frames"
            runner = wandit_runner(shape, case, latent, device=config.device, dtype=dtype)
            try:
                measured = measure_runner(runner, device=config.device, repeats=1, warmup=0)
            finally:
                del runner
                gc.collect()
                if torch.device(config.device).type == "cuda":
                    torch.cuda.empty_cache()
            planned = evaluation_memory(shape, case, latent, element_size=element)
            emit({"video_frames": video_frames, "latent": latent.to_dict(), "case": name,
                  "dtype": str(dtype).removeprefix("torch."), "seconds": measured.step_seconds,
                  "peak_memory_mib": measured.peak_memory_mib,
                  "working_memory_mib": measured.working_memory_mib,
                  "planned_working_mib": planned.total / MIB, "memory_method": measured.memory_method,
                  "flops": model_flops(case, shape, latent).total})
    return None


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per length: each ReHyAt case's speed-up over softmax and its peak memory as a share of softmax's."""
    by_frames: dict[int, dict[str, dict[str, Any]]] = {}
    for case in cases:
        by_frames.setdefault(case["video_frames"], {})[case["case"]] = case
    rows = []
    for frames, named in sorted(by_frames.items()):
        row: dict[str, Any] = {"video_frames": frames}
        softmax = named.get("softmax")
        for name, case in named.items():
            if name != "softmax" and softmax is not None:
                row[name] = {"speedup": softmax["seconds"] / case["seconds"],
                             "peak_share_of_softmax": case["peak_memory_mib"] / softmax["peak_memory_mib"]}
        rows.append(row)
    return {"per_length": rows}
