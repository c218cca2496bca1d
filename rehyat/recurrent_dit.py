"""The long-video engine: a whole DiT forward run chunk after chunk with per-block state.

Every part of a Wan block except self-attention is per token (patch embedding with temporal patch
1, modulation, cross-attention, FFN, head), so with every self-attention converted and causal,
one forward can be computed Tc frames at a time: each block continues from its own recurrent
state. The result equals the parallel causal forward to rounding; peak memory is one chunk's
activations plus the states, independent of the number of frames.

Model adapters implement :class:`ChunkedDiT`; :func:`run_chunked_forward` is the one loop.
Inference only: the states are updated in place as blocks run, so gradient checkpointing (which
re-runs blocks) must not be used with it — train with the parallel form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

from .hybrid import FrameGrid, ReHyAtRun
from .ops import chunk_layout


class ChunkedDiT(Protocol):
    """What a model adapter supplies to :func:`run_chunked_forward`."""

    def embed(self, frame_start: int, frame_end: int) -> Any:
        """Tokens of (absolute) latent frames ``[frame_start, frame_end)``, ready for the first block."""

    def run_block(self, index: int, tokens: Any, frame_start: int, frame_end: int, run: ReHyAtRun) -> Any:
        """Block ``index`` on a chunk's tokens (RoPE at the chunk's absolute frame positions)."""

    def finish_chunk(self, tokens: Any, frame_start: int, frame_end: int) -> Tensor:
        """Head + unpatchify of a chunk: its slice of the model output."""


def run_chunked_forward(
    model: ChunkedDiT, *, grid: FrameGrid, num_blocks: int, chunk_frames: int, frame_offset: int = 0,
    states: dict[int, Any] | None = None, states_out: dict[int, Any] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> list[Tensor]:
    """Run ``model`` chunk by chunk over ``grid.frames`` frames; returns each chunk's output.

    Args:
        model: the adapter. Its methods receive ABSOLUTE frame indices ``[frame_offset + a,
            frame_offset + b)`` (RoPE positions of the clip), and map them to its own tensors.
        grid: the token grid of the frames this call runs (frames × height × width).
        num_blocks: blocks per chunk, run in order.
        chunk_frames: Tc of the converted blocks (chunks here = their chunks).
        frame_offset: absolute index of the first frame of this call: a continuation of a clip.
            Must be a multiple of ``chunk_frames`` (a continuation starts on a chunk boundary).
        states: per-block states after the frames before ``frame_offset`` (None or empty: fresh).
        states_out: if given, filled with the final per-block states (to continue the clip).
        on_chunk: called after each chunk with (chunk index, chunk count) — progress / cancel.

    Raises:
        ValueError: ``frame_offset`` is not on a chunk boundary, or a state saw other frames.
    """
    if frame_offset < 0 or frame_offset % chunk_frames:
        raise ValueError(
            f"a chunked forward must start on a chunk boundary: frame_offset={frame_offset} is not a "
            f"non-negative multiple of chunk_frames={chunk_frames}"
        )
    run = ReHyAtRun(grid=grid, mode="recurrent", states=dict(states or {}))
    for block, state in run.states.items():
        if state.frames_seen != frame_offset:
            raise ValueError(
                f"block {block}: its state saw {state.frames_seen} frames but this forward starts at "
                f"frame_offset={frame_offset}"
            )
    if frame_offset and not run.states:
        raise ValueError(f"frame_offset={frame_offset} needs the states of the frames before it; got none")
    outputs = []
    chunks = chunk_layout(grid.frames, chunk_frames, 0)
    for chunk in chunks:
        f0, f1 = frame_offset + chunk.frame_start, frame_offset + chunk.frame_end
        run.grid = FrameGrid(f1 - f0, grid.height, grid.width)
        tokens = model.embed(f0, f1)
        for index in range(num_blocks):
            tokens = model.run_block(index, tokens, f0, f1, run)
        outputs.append(model.finish_chunk(tokens, f0, f1))
        if on_chunk is not None:
            on_chunk(chunk.index, len(chunks))
    if states_out is not None:
        states_out.update(run.states)
    return outputs
