"""Conditioning of one streaming chunk: ComfyUI's processed conds restricted to the chunk's frames.

Per-frame inputs (the I2V concat latent) are sliced; inputs shared by every frame pass through;
area / mask conditioning, ControlNets and unknown inputs are refused by name, never dropped.
Duck-typed on ComfyUI's objects: never imports ``comfy``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# Conditioning entries (ComfyUI's processed conds) and how a streaming chunk uses them.
_PER_FRAME_CONDS = ("c_concat",)  # (B, C, T, H, W): sliced to the chunk's frames
_SHARED_CONDS = ("c_crossattn", "clip_fea")  # the same for every chunk


@contextlib.contextmanager
def chunk_conditioning(guider: Any, frame_start: int, frame_end: int, frames: int) -> Iterator[None]:
    """While a streaming chunk runs, give ``guider`` (a CFGGuider during sampling) conditioning for
    frames ``[frame_start, frame_end)`` only: per-frame inputs such as the I2V concat latent are
    sliced; area / mask conditioning, ControlNets and unknown inputs are refused."""
    original = getattr(guider, "conds", None)
    if not isinstance(original, dict):
        yield
        return
    sliced = {}
    for name, conds in original.items():
        sliced[name] = [_chunk_cond(name, cond, frame_start, frame_end, frames) for cond in conds]
    guider.conds = sliced
    try:
        yield
    finally:
        guider.conds = original


def _chunk_cond(name: str, cond: dict, f0: int, f1: int, frames: int) -> dict:
    if cond.get("area") is not None or cond.get("mask") is not None:
        raise ValueError(
            f"{name} conditioning with an area or mask cannot stream chunk by chunk: remove the area / "
            "mask node, or use order='sweep'"
        )
    if cond.get("control") is not None:
        raise ValueError(f"{name} conditioning carries a ControlNet, which ReHyAt's chunked forward does not "
                         "support: remove it")
    model_conds = dict(cond.get("model_conds") or {})
    for key, value in model_conds.items():
        if key in _PER_FRAME_CONDS:
            tensor = value.cond  # (B, C, T, H, W)
            if tensor.ndim != 5 or tensor.shape[2] != frames:
                raise ValueError(f"{name} conditioning input {key!r} of shape {tuple(tensor.shape)} does not "
                                 f"have the latent's {frames} frames")
            model_conds[key] = value._copy_with(tensor[:, :, f0:f1])
        elif key not in _SHARED_CONDS:
            raise ValueError(
                f"{name} conditioning input {key!r} is not supported by the streaming order: remove the node "
                "that adds it, or use order='sweep'"
            )
    return {**cond, "model_conds": model_conds}
