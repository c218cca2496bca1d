"""Chunk layout and argument validation shared by every form of the ReHyAt op.

Frames are indexed in the *extended* sequence ``E = overlap frames of the initial state ++ new
frames``; ``n_ov`` is the number of overlap frames (0 without an initial state). For new-frame
chunk t (frames ``[t·Tc, min((t+1)·Tc, T))``):

- softmax window in E:  ``[max(t·Tc − To + n_ov, 0), n_ov + min((t+1)·Tc, T))``
- linear set (causal):   the state's S, z plus E frames ``[0, window start)``
- linear set (non-causal, no state): every frame outside the window.

Without an initial state this is exactly the pinned definition: softmax set
``[max(t·Tc − To, 0), min((t+1)·Tc, T))``, linear set ``[0, max(t·Tc − To, 0))``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from torch import Tensor

from ..config import require_int
from .state import RecurrentState

MODES = ("parallel", "recurrent", "naive")


@dataclass(frozen=True)
class Chunk:
    """One query chunk: new-frame range and its softmax window in the extended sequence."""

    index: int
    frame_start: int  # first new frame of the chunk
    frame_end: int  # one past its last new frame
    window_start: int  # first E frame of the softmax window
    window_end: int  # one past the last E frame of the window


def chunk_layout(num_frames: int, chunk_frames: int, overlap_frames: int, n_ov: int = 0) -> list[Chunk]:
    """The chunks of ``num_frames`` new frames after ``n_ov`` overlap frames (see module doc)."""
    chunks = []
    for index, start in enumerate(range(0, num_frames, chunk_frames)):
        end = min(start + chunk_frames, num_frames)
        window_start = max(start - overlap_frames + n_ov, 0)
        chunks.append(Chunk(index, start, end, window_start, n_ov + end))
    return chunks


def validate_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    tokens_per_frame: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool,
    mode: str = "parallel",
    initial_state: RecurrentState | None = None,
    output_final_state: bool = False,
    state_name: str = "initial_state",
    scale: float | None = None,
) -> int:
    """Check every argument of the op and return the number of frames T.

    ``state_name`` is the caller's name for ``initial_state`` (used in messages).

    Raises:
        ValueError / TypeError naming the offending parameter and the allowed range.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    for name, value, low in (
        ("tokens_per_frame", tokens_per_frame, 1),
        ("chunk_frames", chunk_frames, 1),
        ("overlap_frames", overlap_frames, 0),
    ):
        require_int(name, value, low=low)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool; got {causal!r}")
    check_scale(scale)
    if mode == "recurrent" and not causal:
        raise ValueError(
            "mode='recurrent' requires causal=True: the non-causal variant attends to future "
            "frames, which no recurrence can see; use mode='parallel' or causal=True"
        )
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError(
            "initial_state / output_final_state need causal=True (a non-causal layer has no "
            "recurrent state)"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, d); got {shape}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must have the same shape (B, H, N, d); got q{tuple(q.shape)}, "
            f"k{tuple(k.shape)}, v{tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if not q.is_floating_point():
        raise TypeError(f"q, k, v must be floating point; got {q.dtype}")
    n = q.shape[2]
    if n == 0 or n % tokens_per_frame:
        raise ValueError(
            f"sequence length N={n} must be a positive multiple of tokens_per_frame="
            f"{tokens_per_frame} (tokens are frame-major: N = T · tokens_per_frame)"
        )
    if initial_state is not None:
        _validate_state(initial_state, q, tokens_per_frame, overlap_frames, state_name)
        check_chunk_boundary(initial_state, chunk_frames, name=state_name)
    return n // tokens_per_frame


def check_chunk_boundary(state: RecurrentState, chunk_frames: int, *, name: str = "state") -> None:
    """Refuse a continuation that does not start on a chunk boundary (``frames_seen % Tc != 0``).

    Chunks are cut at multiples of Tc from frame 0, so a state that ended inside a chunk (after a
    partial last chunk, or one made with another Tc) would silently attend differently from one pass.
    """
    seen = state.frames_seen
    require_int(f"{name}.frames_seen", seen, low=0)
    if seen % chunk_frames:
        raise ValueError(
            f"a continuation must start on a chunk boundary: {name}.frames_seen={seen} is not a "
            f"multiple of chunk_frames={chunk_frames} (the state ends inside a chunk, e.g. after a "
            f"partial last chunk of {seen % chunk_frames} frame(s)); continue from the state of the last "
            f"chunk boundary (frame {seen - seen % chunk_frames}) and re-run the frames after it"
        )


def _validate_state(
    state: RecurrentState, q: Tensor, tokens_per_frame: int, overlap_frames: int, name: str
) -> None:
    batch, heads, _, dim = q.shape
    if not isinstance(state, RecurrentState):
        raise TypeError(f"{name} must be a RecurrentState; got {type(state).__name__}")
    if state.kv.shape[:2] != (batch, heads) or state.kv.shape[3] != dim:
        raise ValueError(
            f"{name}.kv has shape {tuple(state.kv.shape)}; expected ({batch}, {heads}, d', {dim})"
        )
    if state.k_sum.shape != state.kv.shape[:3]:
        raise ValueError(
            f"{name}.k_sum has shape {tuple(state.k_sum.shape)}; expected {tuple(state.kv.shape[:3])}"
        )
    ov = state.k_overlap
    if ov.shape != state.v_overlap.shape or ov.shape[:2] != (batch, heads) or ov.shape[3] != dim:
        raise ValueError(
            f"{name} overlap K/V shapes {tuple(ov.shape)} / {tuple(state.v_overlap.shape)} "
            f"do not match q {tuple(q.shape)}"
        )
    if ov.shape[2] % tokens_per_frame or ov.shape[2] // tokens_per_frame > overlap_frames:
        raise ValueError(
            f"{name} holds {ov.shape[2]} overlap tokens; expected a multiple of "
            f"tokens_per_frame={tokens_per_frame} covering at most overlap_frames={overlap_frames} frames"
        )
    if state.kv.device != q.device:
        raise ValueError(f"{name} is on {state.kv.device} but q is on {q.device}")


def check_scale(scale: float | None) -> None:
    """``scale`` must be None (``1/√d``) or a finite number > 0 (NaN / inf / ≤ 0 have no meaning)."""
    if scale is None:
        return
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not number or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0 (or None for 1/√d); got {scale!r}")


CHECK_FEATURE_SIGN = os.environ.get("REHYAT_CHECK_FEATURES", "") not in ("", "0")
"""Also check that feature maps return non-negative features (set ``REHYAT_CHECK_FEATURES=1``, or
this attribute in tests). Off by default: the check reads the features back (a device sync per call),
and the built-in φ are positive by construction (softplus + eps). A φ with negative features makes
``1 + φq·z`` reach 0 and the output blow up, so custom feature maps should be run with it once."""


def check_features(name: str, features: Tensor, like: Tensor) -> None:
    """Check a feature map's output ``(B, H, n, d')`` against its input ``(B, H, n, d)``.

    With :data:`CHECK_FEATURE_SIGN` also refuse negative features.
    """
    if features.ndim != 4 or features.shape[:3] != like.shape[:3]:
        raise ValueError(
            f"{name} must map (B, H, n, d) to (B, H, n, d'); got {tuple(features.shape)} "
            f"for input {tuple(like.shape)}"
        )
    if CHECK_FEATURE_SIGN and features.numel() and bool((features < 0).any()):
        raise ValueError(
            f"{name} returned negative features (min {float(features.detach().min()):.3g}): feature maps "
            "must be non-negative (e.g. end in softplus / exp / relu + eps)"
        )


def check_feature_widths(fq: Tensor, fk: Tensor, state: RecurrentState | None = None) -> None:
    """φq's and φk's outputs (and a state holding S, z) must share the feature width d'."""
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(
            f"phi_q gives d'={fq.shape[-1]} features but phi_k gives d'={fk.shape[-1]}; "
            "phi_q, phi_k and the state must share one feature width"
        )
    if state is not None and state.feature_dim and state.feature_dim != fk.shape[-1]:
        raise ValueError(
            f"phi_k gives d'={fk.shape[-1]} features but the recurrent state holds d'={state.feature_dim}: "
            "a state only continues with feature maps of the width that built it"
        )
