"""op_correct: bf16 / fp16 ReHyAt (parallel and recurrent) against the fp64 naive form.

Error measures and bounds are those of tests/test_ops_precision.py (``u`` = unit roundoff of the
activations' dtype, bf16 2⁻⁸, fp16 2⁻¹¹): rms relative error ≤ 1.5u and max error ≤ u·max|v|. The
reference is the exact result on the same low-precision inputs, computed head by head (the dense
``N × N`` fp64 masks of one head at a time) with the fp64 φ features precomputed for all heads.
A size whose reference does not fit in memory is recorded as skipped with the bytes it needed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ..ops import rehyat_attention, rehyat_attention_naive
from .config import GpuCheckConfig
from .guard import Deadline
from .inputs import attention_inputs, feature_maps, synchronize

UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
RMS_BOUND_UNITS = 1.5
MAX_BOUND_UNITS = 1.0
FORMS = ("parallel", "recurrent")
REFERENCE_MATRICES = 5  # fp64 N × N_ext tensors alive at once in the naive form (logits, weights, …)


def reference_bytes(tokens: int) -> int:
    """Peak bytes of the naive reference for one head of ``tokens`` tokens."""
    return REFERENCE_MATRICES * 8 * tokens * tokens


def bounds() -> dict[str, Any]:
    """The stated bounds, per dtype."""
    return {name: {"rms_relative": RMS_BOUND_UNITS * u, "max_over_max_abs_v": MAX_BOUND_UNITS * u,
                   "unit_roundoff": u} for name, u in UNIT_ROUNDOFF.items()}


@torch.inference_mode()
def exact_output(q, k, v, maps, config: GpuCheckConfig) -> torch.Tensor:
    """fp64 naive ReHyAt on the same inputs, one head at a time; ``(1, H, N, d)`` fp64."""
    exact_maps = copy.deepcopy(maps).double()
    fq, fk = exact_maps.phi_q(q.double()), exact_maps.phi_k(k.double())  # (1, H, N, d') fp64
    heads = []
    for h in range(q.shape[1]):
        one = slice(h, h + 1)
        heads.append(rehyat_attention_naive(
            q[:, one].double(), k[:, one].double(), v[:, one].double(),
            phi_q=lambda _x, one=one: fq[:, one], phi_k=lambda _x, one=one: fk[:, one],
            tokens_per_frame=config.tokens_per_frame, chunk_frames=config.chunk_frames,
            overlap_frames=config.overlap_frames))
    return torch.cat(heads, dim=1)


def errors(got: torch.Tensor, exact: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """(rms relative error, max error / max|v|)."""
    diff = got.double() - exact
    return float(diff.norm() / exact.norm()), float(diff.abs().max() / v.double().abs().max())


def _fits(config: GpuCheckConfig, tokens: int) -> tuple[bool, int]:
    need = reference_bytes(tokens)
    if torch.device(config.device).type != "cuda":
        return True, need
    free, _ = torch.cuda.mem_get_info(config.device)
    return need <= 0.8 * free, need


def run_cases(config: GpuCheckConfig, emit: Callable[[dict[str, Any]], None],
              deadline: Deadline) -> str | None:
    """Check every (dtype, frames, form); returns a skip reason when the deadline stopped it."""
    maps = feature_maps(config)
    for dtype_name in UNIT_ROUNDOFF:
        dtype = getattr(torch, dtype_name)
        for frames in config.correct_frames:
            if deadline.expired():
                return f"time guard: stopped before {dtype_name} at {frames} frames"
            base = {"dtype": dtype_name, "frames": frames, "heads": config.heads, "head_dim": config.head_dim,
                    "tokens_per_frame": config.tokens_per_frame}
            q, k, v = attention_inputs(config, frames, dtype)
            fits, need = _fits(config, q.shape[2])
            if not fits:
                for form in FORMS:
                    emit({**base, "form": form, "skipped": f"fp64 reference needs {need / 2**30:.1f} GiB"})
                continue
            exact = exact_output(q, k, v, maps, config)
            u = UNIT_ROUNDOFF[dtype_name]
            for form in FORMS:
                with torch.inference_mode():
                    out = rehyat_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k,
                                           tokens_per_frame=config.tokens_per_frame,
                                           chunk_frames=config.chunk_frames,
                                           overlap_frames=config.overlap_frames, mode=form)
                synchronize(config.device)
                rms, worst = errors(out, exact, v)
                emit({**base, "form": form, "rms_error": rms, "max_error": worst,
                      "rms_bound": RMS_BOUND_UNITS * u, "max_bound": MAX_BOUND_UNITS * u,
                      "finite": bool(torch.isfinite(out).all()),
                      "pass": bool(torch.isfinite(out).all()) and rms <= RMS_BOUND_UNITS * u
                      and worst <= MAX_BOUND_UNITS * u})
            del exact, q, k, v
    return None


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Bounds and the overall pass flag (False if any case failed or none was checked)."""
    checked = [c for c in cases if "pass" in c]
    return {"bounds": bounds(), "checked": len(checked), "skipped_cases": len(cases) - len(checked),
            "pass": bool(checked) and all(c["pass"] for c in checked)}
