"""Recurrent form of ReHyAt attention: chunk after chunk with an explicit state (causal only).

Working memory is one chunk's activations plus the state — independent of the number of frames.
A state continues only from a chunk boundary (``frames_seen`` a multiple of Tc) and a step takes at
most Tc frames; anything else would silently differ from the parallel form and is refused.
Precision as in :mod:`rehyat.ops.kernels`: with bf16 / fp16 activations φ and the update / readout
matmuls run in that dtype while the state's S and z stay fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import (
    FeatureMap,
    absorb,
    add_to_state,
    features,
    hybrid_output,
    softmax_window,
    split_state_matrix,
    state_matrix,
    take_overlap,
)
from .layout import chunk_layout, validate_inputs
from .scratch import Scratch, inference_scratch
from .state import RecurrentState


def rehyat_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: RecurrentState,
    *,
    phi_q: FeatureMap,
    phi_k: FeatureMap,
    tokens_per_frame: int,
    chunk_frames: int,
    overlap_frames: int,
    scale: float | None = None,
    carry_state: bool = True,
    out: Tensor | None = None,
    scratch: Scratch | None = None,
) -> tuple[Tensor, RecurrentState]:
    """Attend one chunk of frames given the state of everything before it.

    Args:
        q, k, v: the chunk's tokens ``(B, H, n·P, d)``, frame-major, ``1 ≤ n ≤ chunk_frames``
            (``n < chunk_frames`` only for the last chunk of a sequence).
        state: state before the chunk (``RecurrentState.empty(k)`` for the first chunk); its
            ``frames_seen`` must be a multiple of ``chunk_frames`` (the chunk starts on a boundary).
        phi_q, phi_k: feature maps ``(B, H, n, d) -> (B, H, n, d')``.
        tokens_per_frame: P.
        chunk_frames: Tc, the chunk length the sequence is cut into (as in the parallel form).
        overlap_frames: To.
        scale: softmax scale (default ``1/√d``).
        carry_state: when False (a last chunk whose state nobody reads) the chunk is not absorbed
            and ``state`` is returned unchanged, saving that work.
        out: optional ``(B, H, n·P, d)`` tensor (any strides) to write the output into.
        scratch: reusable inference buffers (:class:`~rehyat.ops.scratch.Scratch`); pass the same
            one to every step of a sequence to keep the temporaries warm. Ignored under autograd.

    Returns:
        ``(out, next_state)``: ``out`` ``(B, H, n·P, d)``; ``next_state`` has absorbed every frame of
        (overlap + chunk) except the last ``To``, which become its overlap K/V.

    Raises:
        ValueError: the state does not end on a chunk boundary (``frames_seen % chunk_frames``),
            or the chunk has more than ``chunk_frames`` frames — either would silently differ
            from the parallel form.
    """
    if not isinstance(state, RecurrentState):
        raise TypeError(
            f"state must be a RecurrentState (RecurrentState.empty(k) before the first chunk); "
            f"got {type(state).__name__}"
        )
    p = tokens_per_frame
    frames = validate_inputs(
        q, k, v, tokens_per_frame=p, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=True, mode="recurrent", initial_state=state,
        state_name="state", scale=scale,
    )
    if frames > chunk_frames:
        raise ValueError(
            f"a recurrent step takes one chunk of at most chunk_frames={chunk_frames} frames; got "
            f"{frames} frames (N={q.shape[2]} tokens at tokens_per_frame={p}): split it into chunks "
            "of chunk_frames frames, or use rehyat_attention(mode='recurrent'), which does"
        )
    scratch = inference_scratch(scratch)
    k_win = _with_overlap(state.k_overlap, k, scratch, "window.k")  # (B, H, m, d)
    v_win = _with_overlap(state.v_overlap, v, scratch, "window.v")
    o_soft = softmax_window(q, k_win, v_win, scale)  # (B, H, n·P, d)
    sz = state_matrix(state.kv, state.k_sum) if state.has_linear_part else None
    if sz is not None:
        o_soft = hybrid_output(o_soft, features(phi_q, q, "phi_q", scratch), sz, out=out, scratch=scratch)
    elif out is not None:
        o_soft = out.copy_(o_soft)

    if not carry_state:
        return o_soft, state
    window_frames = k_win.shape[2] // p
    leaving = max(window_frames - overlap_frames, 0) * p
    if leaving:
        added = absorb(phi_k, k_win[:, :, :leaving], v_win[:, :, :leaving], scratch)  # (B, H, d', d+1)
        sz = added if sz is None else add_to_state(sz, added)
    k_ov, v_ov = take_overlap(k_win, v_win, k_win.shape[2] - leaving)
    if sz is None:
        kv, k_sum = state.kv, state.k_sum
    else:
        kv, k_sum = split_state_matrix(sz)
    next_state = RecurrentState(
        kv=kv, k_sum=k_sum, k_overlap=k_ov, v_overlap=v_ov,
        frames_seen=state.frames_seen + frames,
    )
    return o_soft, next_state


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
    scratch: Scratch | None = None,
) -> Tensor | tuple[Tensor, RecurrentState]:
    """ReHyAt attention by running :func:`rehyat_step` over the chunks (same numbers as parallel)."""
    num_frames = validate_inputs(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=causal, mode="recurrent",
        initial_state=initial_state, output_final_state=output_final_state, scale=scale,
    )
    p = tokens_per_frame
    state = initial_state if initial_state is not None else RecurrentState.empty(k)
    out = q.new_empty(q.shape)  # (B, H, N, d)
    scratch = inference_scratch(scratch)
    chunks = chunk_layout(num_frames, chunk_frames, overlap_frames)
    for chunk in chunks:
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        _, state = rehyat_step(
            q[:, :, rows], k[:, :, rows], v[:, :, rows], state,
            phi_q=phi_q, phi_k=phi_k, tokens_per_frame=p, chunk_frames=chunk_frames,
            overlap_frames=overlap_frames, scale=scale,
            carry_state=output_final_state or chunk is not chunks[-1], out=out[:, :, rows], scratch=scratch,
        )
    return (out, state) if output_final_state else out


def _with_overlap(overlap: Tensor, chunk: Tensor, scratch: Scratch | None, name: str) -> Tensor:
    """The chunk's tokens with the overlap tokens before them (token axis), in ``scratch`` if given."""
    if overlap.shape[2] == 0:
        return chunk
    batch, heads, n_ov, dim = overlap.shape
    shape = (batch, heads, n_ov + chunk.shape[2], dim)
    if scratch is None:
        return torch.cat([overlap.to(chunk.dtype), chunk], dim=2)
    window = scratch.get(name, shape, dtype=chunk.dtype, device=chunk.device)
    window[:, :, :n_ov].copy_(overlap)
    window[:, :, n_ov:].copy_(chunk)
    return window
