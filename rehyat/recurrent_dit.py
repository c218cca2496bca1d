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

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from .hybrid import FrameGrid, ReHyAtRun
from .ops import chunk_layout


class ChunkedDiT(Protocol):
    """What a model adapter supplies to :func:`run_chunked_forward`."""

    def embed(self, frame_start: int, frame_end: int) -> Any:
        """Tokens of latent frames ``[frame_start, frame_end)``, ready for the first block."""

    def run_block(self, index: int, tokens: Any, frame_start: int, frame_end: int, run: ReHyAtRun) -> Any:
        """Block ``index`` on a chunk's tokens (RoPE at the chunk's absolute frame positions)."""

    def finish_chunk(self, tokens: Any, frame_start: int, frame_end: int) -> Tensor:
        """Head + unpatchify of a chunk: its slice of the model output."""


def run_chunked_forward(
    model: ChunkedDiT, *, grid: FrameGrid, num_blocks: int, chunk_frames: int,
    states_out: dict[int, Any] | None = None,
) -> list[Tensor]:
    """Run ``model`` chunk by chunk over ``grid.frames`` frames; returns each chunk's output.

    Args:
        model: the adapter.
        grid: the full token grid (frames × height × width).
        num_blocks: blocks per chunk, run in order.
        chunk_frames: Tc of the converted blocks (chunks here = their chunks).
        states_out: if given, filled with the final per-block states (for extending a clip).
    """
    run = ReHyAtRun(grid=grid, mode="recurrent")
    outputs = []
    for chunk in chunk_layout(grid.frames, chunk_frames, 0):
        f0, f1 = chunk.frame_start, chunk.frame_end
        run.grid = FrameGrid(f1 - f0, grid.height, grid.width)
        tokens = model.embed(f0, f1)
        for index in range(num_blocks):
            tokens = model.run_block(index, tokens, f0, f1, run)
        outputs.append(model.finish_chunk(tokens, f0, f1))
    if states_out is not None:
        states_out.update(run.states)
    return outputs


def check_recurrent_capable(converted: Sequence[int], num_blocks: int, causal: bool) -> None:
    """Refuse the recurrent forward unless every block is converted and causal, saying why."""
    missing = sorted(set(range(num_blocks)) - set(converted))
    if missing:
        raise ValueError(
            f"the recurrent (chunk-by-chunk) forward needs every self-attention block converted to "
            f"ReHyAt, but blocks {missing} still use softmax attention over all frames. Convert all "
            f"{num_blocks} blocks (num_blocks={num_blocks} or blocks=None), or use the parallel forward."
        )
    if not causal:
        raise ValueError(
            "the recurrent forward needs causal ReHyAt blocks (causal=True): the non-causal variant "
            "lets early frames attend to later ones. Use causal=True or the parallel forward."
        )
