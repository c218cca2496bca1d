"""Parallel (chunked) form of ReHyAt attention: O(N) time, no N×N tensor, differentiable.

Feature maps run once over all tokens; the linear part comes from per-frame sums
``Σ_{j∈frame} φk(k_j) [v_j, 1]ᵀ`` and their prefix (and, non-causal, suffix) sums over frames; the
softmax part runs the device's fused SDPA kernel once per chunk over its window.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .kernels import (
    features,
    hybrid_output,
    softmax_window,
    split_state_matrix,
    state_matrix,
    values_with_ones,
)
from .layout import Chunk, chunk_layout, validate_inputs
from .state import RecurrentState

FeatureMap = Callable[[Tensor], Tensor]


def rehyat_attention_parallel(
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
    """ReHyAt attention over all chunks at once (see :func:`rehyat.ops.rehyat_attention`)."""
    num_frames = validate_inputs(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=causal, mode="parallel",
        initial_state=initial_state, output_final_state=output_final_state,
    )
    p = tokens_per_frame
    state = initial_state
    n_ov = state.overlap_frames(p) if state is not None else 0
    k_ext = torch.cat([state.k_overlap.to(k.dtype), k], dim=2) if n_ov else k  # (B, H, (n_ov+T)·P, d)
    v_ext = torch.cat([state.v_overlap.to(v.dtype), v], dim=2) if n_ov else v
    total_frames = n_ov + num_frames
    chunks = chunk_layout(num_frames, chunk_frames, overlap_frames, n_ov)
    final_cut = max(total_frames - overlap_frames, 0)  # frames absorbed by the final state

    start_sz = state_matrix(state.kv, state.k_sum) if state is not None and state.has_linear_part else None
    linear = _LinearSets(
        k_ext, v_ext, phi_k, p, chunks, causal, start_sz,
        extra_prefix=final_cut if output_final_state else None,
    )
    fq = features(phi_q, q, "phi_q") if linear.any_for_queries else None  # (B, H, N, d')

    out = q.new_empty(q.shape)  # (B, H, N, d)
    for chunk in chunks:
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        window = slice(chunk.window_start * p, chunk.window_end * p)
        o = softmax_window(q[:, :, rows], k_ext[:, :, window], v_ext[:, :, window], scale)
        sz = linear.for_chunk(chunk)
        out[:, :, rows] = o if sz is None else hybrid_output(o, fq[:, :, rows], sz)
    if not output_final_state:
        return out
    return out, _final_state(linear.prefix_at(final_cut), k_ext, v_ext, final_cut * p, state, num_frames)


class _LinearSets:
    """Prefix / suffix sums of ``φk(k)[v, 1]ᵀ`` over frames, read at chunk window bounds."""

    def __init__(
        self, k_ext: Tensor, v_ext: Tensor, phi_k: FeatureMap, p: int, chunks: list[Chunk],
        causal: bool, start_sz: Tensor | None, extra_prefix: int | None,
    ):
        self.causal = causal
        self.start_sz = start_sz
        total_frames = k_ext.shape[2] // p
        starts = [c.window_start for c in chunks] + ([extra_prefix] if extra_prefix else [])
        ends = [] if causal else [c.window_end for c in chunks if c.window_end < total_frames]
        self.any_for_queries = start_sz is not None or any(c.window_start > 0 for c in chunks) or bool(ends)
        needed = total_frames if ends else max(starts, default=0)
        self.prefix = self.suffix = None
        if needed == 0:
            return
        batch, heads, _, dim = k_ext.shape
        fk = features(phi_k, k_ext[:, :, : needed * p], "phi_k")  # (B, H, F·P, d')
        fk = fk.reshape(batch, heads, needed, p, -1)  # (B, H, F, P, d')
        va = values_with_ones(v_ext[:, :, : needed * p]).reshape(batch, heads, needed, p, dim + 1)
        per_frame = fk.transpose(-1, -2) @ va  # (B, H, F, d', d+1)
        zero = per_frame.new_zeros(per_frame[:, :, :1].shape)
        # prefix[f] = Σ_{frames < f}; suffix[f] = Σ_{frames ≥ f}  — both (B, H, F+1, d', d+1)
        self.prefix = torch.cat([zero, per_frame.cumsum(2)], dim=2)
        if ends:
            self.suffix = torch.cat([per_frame.flip(2).cumsum(2).flip(2), zero], dim=2)

    def prefix_at(self, frame: int) -> Tensor | None:
        """``[S, z]`` over frames ``[0, frame)`` plus the initial state; None when empty."""
        sz = self.prefix[:, :, frame] if self.prefix is not None and frame > 0 else None
        if self.start_sz is None:
            return sz
        return self.start_sz if sz is None else sz + self.start_sz

    def for_chunk(self, chunk: Chunk) -> Tensor | None:
        """``[S, z]`` of the chunk's linear set ``(B, H, d', d+1)``; None when the set is empty."""
        sz = self.prefix_at(chunk.window_start)
        if self.causal or self.suffix is None or chunk.window_end >= self.suffix.shape[2] - 1:
            return sz
        after = self.suffix[:, :, chunk.window_end]
        return after if sz is None else sz + after


def _final_state(
    sz: Tensor | None, k_ext: Tensor, v_ext: Tensor, cut_tokens: int,
    initial: RecurrentState | None, num_frames: int,
) -> RecurrentState:
    """State after the last frame: S, z up to the cut, the remaining frames as overlap K/V."""
    if sz is None:
        empty = RecurrentState.empty(k_ext)
        kv, k_sum = empty.kv, empty.k_sum
    else:
        kv, k_sum = split_state_matrix(sz)
    return RecurrentState(
        kv=kv, k_sum=k_sum,
        k_overlap=k_ext[:, :, cut_tokens:].contiguous(), v_overlap=v_ext[:, :, cut_tokens:].contiguous(),
        frames_seen=(initial.frames_seen if initial is not None else 0) + num_frames,
    )
