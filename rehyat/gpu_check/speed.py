"""op_speed: one attention layer's time — fused softmax SDPA vs ReHyAt parallel vs recurrent.

On CUDA the softmax case runs ``F.scaled_dot_product_attention`` restricted to the flash kernel
(falling back to PyTorch's choice, recorded, when flash is unavailable) and every case is timed with
CUDA events: one warm-up call, then the median of ``repeats`` calls. On CPU ``time.perf_counter``.
FLOPs are counted once per case with ``torch.utils.flop_counter`` (the CPU flash kernel taught by
:func:`rehyat.flops.register_cpu_flash_flop_formula`) next to the analytic count of
:mod:`rehyat.flops`. With ``compile`` the ReHyAt forms are also timed with ``torch.compile``'d φ.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from ..flops import register_cpu_flash_flop_formula, rehyat_attention_flops, softmax_attention_flops
from ..ops import rehyat_attention
from .config import GpuCheckConfig
from .guard import Deadline
from .inputs import attention_inputs, feature_maps, synchronize

BASE_CASES = ("softmax", "parallel", "recurrent")


def activation_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (what ComfyUI runs Wan in), fp32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _flash_context(device: str):
    """Restrict SDPA to the flash kernel on CUDA (None when this torch has no such switch)."""
    if torch.device(device).type != "cuda":
        return None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    return lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def build_cases(config: GpuCheckConfig) -> dict[str, Callable]:
    """``name → fn(q, k, v)`` for the softmax and ReHyAt cases (and compiled φ when asked)."""
    maps = feature_maps(config)
    kwargs = dict(tokens_per_frame=config.tokens_per_frame, chunk_frames=config.chunk_frames,
                  overlap_frames=config.overlap_frames)
    cases: dict[str, Callable] = {"softmax": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    variants = [("", maps.phi_q, maps.phi_k)]
    if config.compile:
        variants.append(("+compile", torch.compile(maps.phi_q), torch.compile(maps.phi_k)))
    for suffix, phi_q, phi_k in variants:
        for form in ("parallel", "recurrent"):
            cases[form + suffix] = (lambda q, k, v, form=form, phi_q=phi_q, phi_k=phi_k: rehyat_attention(
                q, k, v, phi_q=phi_q, phi_k=phi_k, mode=form, **kwargs))
    return cases


def time_case(fn: Callable, q, k, v, device: str, repeats: int, context) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up (CUDA events on CUDA)."""
    cuda = torch.device(device).type == "cuda"
    times = []
    with torch.inference_mode(), (context() if context else nullcontext()):
        fn(q, k, v)
        synchronize(device)
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(q, k, v)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                fn(q, k, v)
                times.append(time.perf_counter() - t0)
    return times


def count_flops(fn: Callable, q, k, v, context) -> int:
    """FLOPs of one call counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_flash_flop_formula()
    with torch.inference_mode(), (context() if context else nullcontext()), \
            FlopCounterMode(display=False) as counter:
        fn(q, k, v)
    return int(counter.get_total_flops())


def analytic_flops(config: GpuCheckConfig, case: str, frames: int) -> int:
    """The analytic count of :mod:`rehyat.flops` for ``case``."""
    if case == "softmax":
        return softmax_attention_flops(1, config.heads, frames * config.tokens_per_frame, config.head_dim)
    return rehyat_attention_flops(1, config.heads, frames, config.tokens_per_frame, config.head_dim,
                                  chunk_frames=config.chunk_frames, overlap_frames=config.overlap_frames,
                                  feature_map=config.feature_map).total


def run_cases(config: GpuCheckConfig, emit: Callable[[dict[str, Any]], None],
              deadline: Deadline) -> str | None:
    """Time every (frames, case); returns a skip reason when the deadline stopped it."""
    dtype = activation_dtype(config.device)
    cases = build_cases(config)
    flash = _flash_context(config.device)
    for frames in config.speed_frames:
        q, k, v = attention_inputs(config, frames, dtype)
        for name, fn in cases.items():
            if deadline.expired():
                return f"time guard: stopped before {name} at {frames} frames"
            context = flash if name == "softmax" else None
            backend = "flash" if context else "default"
            try:
                times = time_case(fn, q, k, v, config.device, config.repeats, context)
            except RuntimeError as exc:
                if context is None:
                    raise
                context, backend = None, f"default (flash refused: {str(exc).splitlines()[0][:120]})"
                times = time_case(fn, q, k, v, config.device, config.repeats, None)
            counted = count_flops(fn, q, k, v, context)
            median = statistics.median(times)
            emit({"frames": frames, "tokens": frames * config.tokens_per_frame, "case": name,
                  "dtype": str(dtype).removeprefix("torch."),
                  "sdpa_backend": backend if name == "softmax" else None,
                  "median_ms": median * 1e3, "times_ms": [t * 1e3 for t in times], "counted_flops": counted,
                  "analytic_flops": analytic_flops(config, name.split("+")[0], frames),
                  "tflops_per_s": counted / median / 1e12 if median > 0 else None})
        del q, k, v
    return None


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per length: speed-up over softmax, FLOP ratio, and speed-up as a share of the FLOP ratio."""
    by_frames: dict[int, dict[str, dict[str, Any]]] = {}
    for case in cases:
        by_frames.setdefault(case["frames"], {})[case["case"]] = case
    rows = []
    for frames, named in sorted(by_frames.items()):
        row: dict[str, Any] = {"frames": frames}
        softmax = named.get("softmax")
        for name, case in named.items():
            if name == "softmax" or softmax is None:
                continue
            speedup = softmax["median_ms"] / case["median_ms"]
            ratio = softmax["counted_flops"] / case["counted_flops"]
            row[name] = {"speedup": speedup, "flop_ratio": ratio, "share_of_flop_ratio": speedup / ratio}
        rows.append(row)
    return {"per_frames": rows}
