"""Teacher capture: hand every target block's self-attention inputs and output to a sink.

A teacher model is sampled normally (softmax attention); while a capture is active, each target
block's ``(q, k, v)`` — after the q/k norm and RoPE, ``(B, H, N, d)`` — and the teacher's attention
output ``y`` ``(B, H, N, d)`` reach :meth:`CaptureSink.attention`, bracketed per model forward by
:meth:`CaptureSink.begin_forward` / :meth:`CaptureSink.end_forward`. Nothing is stored: the sink
uses the tensors and drops them before the teacher goes on to the next block.

Two implementations share this protocol:

- :class:`WanDiTCapture` — forward hooks on ``blocks.N.self_attn.attention`` of the pure-PyTorch
  :class:`rehyat.models.wan.WanDiT` (whose attention submodule receives exactly these tensors);
- :class:`rehyat.integrations.comfyui_capture.ComfyWanCapture` — an object patch of a ComfyUI Wan
  model's ``self_attn`` on a clone of its ``ModelPatcher``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from ..hybrid import FrameGrid


@dataclass
class CapturedAttention:
    """One block's self-attention during one teacher forward.

    Attributes:
        block: the block index.
        q, k, v: ``(B, H, N, d)`` after norm and RoPE (no gradient).
        y: the teacher's softmax attention output ``(B, H, N, d)``.
        grid: the forward's token grid (frames × height × width, frame-major).
    """

    block: int
    q: Tensor
    k: Tensor
    v: Tensor
    y: Tensor
    grid: FrameGrid


class CaptureSink(Protocol):
    """Receives the captured tensors of each teacher forward."""

    def begin_forward(self) -> None:
        """A teacher forward with capture active starts."""

    def attention(self, captured: CapturedAttention) -> None:
        """One target block's tensors (called in block order, during the forward)."""

    def end_forward(self) -> None:
        """The teacher forward finished."""


class AttentionCapture(Protocol):
    """A capture installed on a teacher: a context manager with an ``active`` switch.

    While the context is entered and ``active`` is True, every forward of the teacher calls the
    sink; with ``active`` False the teacher runs untouched (uncaptured denoising steps).
    """

    blocks: tuple[int, ...]
    active: bool

    def __enter__(self) -> AttentionCapture: ...

    def __exit__(self, *exc: object) -> None: ...


def check_blocks(blocks: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """``blocks`` sorted, refusing an empty selection or indices outside ``0..num_blocks-1``."""
    blocks = tuple(sorted(set(int(b) for b in blocks)))
    if not blocks:
        raise ValueError("blocks must select at least one block to distil")
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"blocks {bad} out of range: the model has blocks 0..{num_blocks - 1}")
    return blocks


class WanDiTCapture:
    """Capture on a :class:`rehyat.models.wan.WanDiT` through forward hooks (model untouched).

    Args:
        model: the teacher; every target block's ``self_attn.attention`` must be its softmax
            attention (a converted block would make the "teacher" output a student's).
        blocks: target block indices.
        sink: where captured tensors go.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[int], sink: CaptureSink):
        self.model = model
        self.blocks = check_blocks(blocks, len(model.blocks))
        self.sink = sink
        self.active = False
        self._handles: list = []
        for index in self.blocks:
            attention = model.blocks[index].self_attn.attention
            if type(attention).__name__ != "SoftmaxAttention":
                raise ValueError(
                    f"block {index}'s self-attention is {type(attention).__name__}, not the softmax "
                    "teacher: distil from the original (unconverted) model"
                )

    def __enter__(self) -> WanDiTCapture:
        self._handles.append(self.model.register_forward_pre_hook(self._begin))
        self._handles.append(self.model.register_forward_hook(self._end))
        for index in self.blocks:
            module = self.model.blocks[index].self_attn.attention
            self._handles.append(module.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _begin(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.sink.begin_forward()

    def _end(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self.active:
            self.sink.end_forward()

    def _hook(self, index: int):
        def capture(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self.active:
                q, k, v, run = args[:4]
                self.sink.attention(CapturedAttention(index, q, k, v, output, run.grid))

        return capture
