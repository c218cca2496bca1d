"""Parallel (chunked) form of ReHyAt attention: O(N) time, no N×N tensor, differentiable.

The linear part comes from segment sums ``Σ_j φk(k_j) [v_j, 1]ᵀ`` between consecutive window
bounds and their prefix (and, non-causal, suffix) sums; queries read them chunk by chunk, and the
softmax part runs the device's fused SDPA kernel once per chunk over its window. Temporaries are
chunk-sized. With autograd on everything is differentiable and nothing is mutated in place; with
autograd off the temporaries live in a reused :class:`~rehyat.ops.scratch.Scratch` and the
element-wise maths runs in place (the returned state never aliases it). Precision as in
:mod:`rehyat.ops.kernels` (bf16 / fp16: φ and the linear-part matmuls in that dtype, S and z fp32).
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
)
from .layout import Chunk, chunk_layout, validate_inputs
from .scratch import Scratch, inference_scratch
from .state import RecurrentState


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
    scratch: Scratch | None = None,
) -> Tensor | tuple[Tensor, RecurrentState]:
    """ReHyAt attention over all chunks at once (see :func:`rehyat.ops.rehyat_attention`)."""
    num_frames = validate_inputs(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=causal, mode="parallel",
        initial_state=initial_state, output_final_state=output_final_state, scale=scale,
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
    scratch = inference_scratch(scratch)
    linear = _LinearSets(k_ext, v_ext, phi_k, p, chunks, causal, start_sz, scratch)

    out = q.new_empty(q.shape)  # (B, H, N, d)
    for index, chunk in enumerate(chunks):
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        window = slice(chunk.window_start * p, chunk.window_end * p)
        o = softmax_window(q[:, :, rows], k_ext[:, :, window], v_ext[:, :, window], scale)
        sz = linear.for_chunk(chunk)
        if sz is None:
            out[:, :, rows] = o
        else:
            fq = features(phi_q, q[:, :, rows], "phi_q", scratch)
            hybrid_output(o, fq, sz, out=out[:, :, rows], scratch=scratch)
        if causal:
            # Absorb the frames leaving the softmax window now, while this window's keys and
            # values are still in cache (same sums as absorbing them before the next chunk).
            last = index == len(chunks) - 1
            if not last or output_final_state:
                linear.prefix_at(final_cut if last else chunks[index + 1].window_start)
    if not output_final_state:
        return out
    return out, _final_state(linear.prefix_at(final_cut), k_ext, v_ext, final_cut * p, state, num_frames)


class _LinearSets:
    """``[S, z]`` sums of ``φk(k)[v, 1]ᵀ`` over frames, read at chunk window bounds.

    Causal: one running prefix, advanced segment by segment in frame order (the driver advances
    it right after each chunk, while that chunk's window is warm), so memory is one
    ``(B, H, d', d+1)`` sum plus one segment's temporaries. Non-causal: segment sums
    between all window bounds with their prefix and suffix sums (one per bound).
    """

    def __init__(
        self, k_ext: Tensor, v_ext: Tensor, phi_k: FeatureMap, p: int, chunks: list[Chunk],
        causal: bool, start_sz: Tensor | None, scratch: Scratch | None,
    ):
        self.causal, self.start_sz, self._scratch = causal, start_sz, scratch
        self._k, self._v, self._phi_k, self._p = k_ext, v_ext, phi_k, p
        total_frames = k_ext.shape[2] // p
        ends = set() if causal else {c.window_end for c in chunks if c.window_end < total_frames}
        self._position, self._running = 0, None  # causal running prefix over frames [0, position)
        self.prefix: dict[int, Tensor] = {}
        self.suffix: dict[int, Tensor] = {}
        if not causal and ends:
            self._all_bounds({c.window_start for c in chunks} | ends | {total_frames})

    def _absorb(self, start: int, end: int) -> Tensor:
        p = self._p
        tokens = slice(start * p, end * p)
        return absorb(self._phi_k, self._k[:, :, tokens], self._v[:, :, tokens], self._scratch)

    def _all_bounds(self, bounds: set[int]) -> None:
        ordered = sorted(bounds | {0})
        segments = [self._absorb(a, b) for a, b in zip(ordered, ordered[1:], strict=False)]
        running = None
        for bound, segment in zip(ordered[1:], segments, strict=True):
            running = segment if running is None else running + segment
            self.prefix[bound] = running
        running = None
        for bound, segment in zip(reversed(ordered[:-1]), reversed(segments), strict=True):
            running = segment if running is None else running + segment
            self.suffix[bound] = running

    def prefix_at(self, frame: int) -> Tensor | None:
        """``[S, z]`` over frames ``[0, frame)`` plus the initial state; None when empty.

        Causal reads must come with non-decreasing ``frame`` (chunks in order, then the final cut).
        """
        if self.causal:
            if frame < self._position:
                raise RuntimeError("causal prefix sums must be read in frame order")
            if frame > self._position:
                added = self._absorb(self._position, frame)
                self._running = added if self._running is None else self._running + added
                self._position = frame
            sz = self._running
        else:
            sz = self.prefix.get(frame) if frame > 0 else None
        if self.start_sz is None:
            return sz
        return self.start_sz if sz is None else add_to_state(self.start_sz, sz)

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
