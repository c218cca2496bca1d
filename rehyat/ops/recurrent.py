"""Recurrent form of ReHyAt attention: chunk after chunk with an explicit state (causal only).

Working memory is one chunk's activations plus the state — independent of the number of frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .kernels import (
    absorb,
    features,
    hybrid_output,
    softmax_window,
    split_state_matrix,
    state_matrix,
    take_overlap,
)
from .layout import chunk_layout, validate_inputs
from .state import RecurrentState

FeatureMap = Callable[[Tensor], Tensor]


def rehyat_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: RecurrentState,
    *,
    phi_q: FeatureMap,
    phi_k: FeatureMap,
    tokens_per_frame: int,
    overlap_frames: int,
    scale: float | None = None,
    carry_state: bool = True,
) -> tuple[Tensor, RecurrentState]:
    """Attend one chunk of frames given the state of everything before it.

    Args:
        q, k, v: the chunk's tokens ``(B, H, n·P, d)`` (frame-major, any number of frames n ≥ 1).
        state: state before the chunk (``RecurrentState.empty(k)`` for the first chunk).
        phi_q, phi_k: feature maps ``(B, H, n, d) -> (B, H, n, d')``.
        tokens_per_frame: P.
        overlap_frames: To.
        scale: softmax scale (default ``1/√d``).
        carry_state: when False (a last chunk whose state nobody reads) the chunk is not absorbed
            and ``state`` is returned unchanged, saving that work.

    Returns:
        ``(out, next_state)``: ``out`` ``(B, H, n·P, d)``; ``next_state`` has absorbed every frame of
        (overlap + chunk) except the last ``To``, which become its overlap K/V.
    """
    p = tokens_per_frame
    validate_inputs(
        q, k, v, tokens_per_frame=p, chunk_frames=1,
        overlap_frames=overlap_frames, causal=True, mode="recurrent", initial_state=state,
    )
    k_win = k if state.k_overlap.shape[2] == 0 else _cat_tokens(state.k_overlap, k)  # (B, H, m, d)
    v_win = v if state.v_overlap.shape[2] == 0 else _cat_tokens(state.v_overlap, v)
    out = softmax_window(q, k_win, v_win, scale)  # (B, H, n·P, d)
    sz = state_matrix(state.kv, state.k_sum) if state.has_linear_part else None
    if sz is not None:
        out = hybrid_output(out, features(phi_q, q, "phi_q"), sz)

    if not carry_state:
        return out, state
    window_frames = k_win.shape[2] // p
    leaving = max(window_frames - overlap_frames, 0) * p
    if leaving:
        added = absorb(phi_k, k_win[:, :, :leaving], v_win[:, :, :leaving])  # (B, H, d', d+1)
        sz = added if sz is None else sz + added
    k_ov, v_ov = take_overlap(k_win, v_win, k_win.shape[2] - leaving)
    if sz is None:
        kv, k_sum = state.kv, state.k_sum
    else:
        kv, k_sum = split_state_matrix(sz)
    next_state = RecurrentState(
        kv=kv, k_sum=k_sum, k_overlap=k_ov, v_overlap=v_ov,
        frames_seen=state.frames_seen + q.shape[2] // p,
    )
    return out, next_state


def rehyat_attention_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    phi_q: FeatureMap,
    phi_k: FeatureMap,
    tokens_per_frame: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    initial_state: RecurrentState | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, RecurrentState]:
    """ReHyAt attention by running :func:`rehyat_step` over the chunks (same numbers as parallel)."""
    num_frames = validate_inputs(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=causal, mode="recurrent",
        initial_state=initial_state, output_final_state=output_final_state,
    )
    p = tokens_per_frame
    state = initial_state if initial_state is not None else RecurrentState.empty(k)
    out = q.new_empty(q.shape)  # (B, H, N, d)
    chunks = chunk_layout(num_frames, chunk_frames, overlap_frames)
    for chunk in chunks:
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        out[:, :, rows], state = rehyat_step(
            q[:, :, rows], k[:, :, rows], v[:, :, rows], state,
            phi_q=phi_q, phi_k=phi_k, tokens_per_frame=p, overlap_frames=overlap_frames, scale=scale,
            carry_state=output_final_state or chunk is not chunks[-1],
        )
    return (out, state) if output_final_state else out


def _cat_tokens(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate overlap tokens ``a`` before chunk tokens ``b`` along the token axis."""
    return torch.cat([a.to(b.dtype), b], dim=2)
