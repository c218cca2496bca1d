"""Parallel (chunked) form of ReHyAt attention: O(N) time, no N×N tensor, differentiable.

The linear part comes from segment sums ``Σ_j φk(k_j) [v_j, 1]ᵀ`` between consecutive window
bounds and their prefix (and, non-causal, suffix) sums; queries read them chunk by chunk, and the
softmax part runs the device's fused SDPA kernel once per chunk over its window. Temporaries are
chunk-sized; everything is differentiable and the state is never mutated in place.
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

    out = q.new_empty(q.shape)  # (B, H, N, d)
    for chunk in chunks:
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        window = slice(chunk.window_start * p, chunk.window_end * p)
        o = softmax_window(q[:, :, rows], k_ext[:, :, window], v_ext[:, :, window], scale)
        sz = linear.for_chunk(chunk)
        out[:, :, rows] = o if sz is None else hybrid_output(o, features(phi_q, q[:, :, rows], "phi_q"), sz)
    if not output_final_state:
        return out
    return out, _final_state(linear.prefix_at(final_cut), k_ext, v_ext, final_cut * p, state, num_frames)


class _LinearSets:
    """Prefix / suffix sums of ``φk(k)[v, 1]ᵀ`` over frames, read at chunk window bounds.

    Keys are absorbed segment by segment (between consecutive window bounds), so temporaries are
    chunk-sized whatever the sequence length; only one ``(B, H, d', d+1)`` sum per bound is kept.
    """

    def __init__(
        self, k_ext: Tensor, v_ext: Tensor, phi_k: FeatureMap, p: int, chunks: list[Chunk],
        causal: bool, start_sz: Tensor | None, extra_prefix: int | None,
    ):
        self.causal = causal
        self.start_sz = start_sz
        total_frames = k_ext.shape[2] // p
        starts = {c.window_start for c in chunks} | ({extra_prefix} if extra_prefix else set())
        ends = set() if causal else {c.window_end for c in chunks if c.window_end < total_frames}
        self.any_for_queries = start_sz is not None or any(c.window_start > 0 for c in chunks) or bool(ends)
        bounds = sorted({0} | starts | ends | ({total_frames} if ends else set()))
        segments = [  # (B, H, d', d+1) per segment [a, b) of frames
            absorb(phi_k, k_ext[:, :, a * p:b * p], v_ext[:, :, a * p:b * p])
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]
        self.prefix: dict[int, Tensor] = {}
        running = None
        for bound, segment in zip(bounds[1:], segments, strict=True):
            running = segment if running is None else running + segment
            self.prefix[bound] = running
        self.suffix: dict[int, Tensor] = {}
        if ends:
            running = None
            for bound, segment in zip(reversed(bounds[:-1]), reversed(segments), strict=True):
                running = segment if running is None else running + segment
                self.suffix[bound] = running

    def prefix_at(self, frame: int) -> Tensor | None:
        """``[S, z]`` over frames ``[0, frame)`` plus the initial state; None when empty."""
        sz = self.prefix.get(frame) if frame > 0 else None
        if self.start_sz is None:
            return sz
        return self.start_sz if sz is None else sz + self.start_sz

    def for_chunk(self, chunk: Chunk) -> Tensor | None:
        """``[S, z]`` of the chunk's linear set ``(B, H, d', d+1)``; None when the set is empty."""
        sz = self.prefix_at(chunk.window_start)
        after = None if self.causal else self.suffix.get(chunk.window_end)
        if after is None:
            return sz
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
