"""Reusable inference buffers for the chunked ReHyAt forms.

Every chunk needs the same few chunk-sized temporaries (φ's hidden layer and features, the
``[v, 1]`` matrix, the ``φq·[S, z]`` readout). On CUDA the caching allocator hands back the same
blocks each time; on CPU there is no caching allocator, and a fresh multi-MiB tensor is paid for
with a page fault per 4 KiB page on first touch (≈10 % of a chunk's time for Wan2.1-1.3B shapes).
A :class:`Scratch` keeps one buffer per role for the duration of an op call (or a model forward),
so the pages stay warm. It is used only when autograd is off: training keeps fresh tensors.

Roles whose lifetimes never overlap share a buffer, so the working set stays at the few tensors
that are alive together: :data:`TEMPORARY` holds whatever dies inside the call that asked for it
(φ's hidden layer, the ``[v, 1]`` matrix, the ``φq·[S, z]`` readout), :data:`FEATURES` holds a
feature map's output until its caller has consumed it (with bf16 / fp16 inputs φ's low-precision
MLP output lives in ``"features.low_precision"`` until it is widened into :data:`FEATURES`), and
the recurrent step keeps its overlap-plus-chunk key/value windows in ``"window.k"`` / ``"window.v"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TEMPORARY = "temporary"
FEATURES = "features"


class Scratch:
    """Named buffers that are grown on demand and reused by later requests of the same name.

    A tensor returned by :meth:`get` is valid until the next :meth:`get` of the same name: the
    caller must consume it before asking again (the ops use each role strictly in sequence).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` backed by the buffer ``name``."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def inference_scratch(scratch: Scratch | None) -> Scratch | None:
    """``scratch`` (or a new one) when autograd is off, else None: gradients need fresh tensors."""
    if torch.is_grad_enabled():
        return None
    return scratch if scratch is not None else Scratch()
