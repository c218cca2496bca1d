"""Reading the weights of a ComfyUI model whose layers come from another pack's custom ops.

Packs such as ComfyUI-GGUF load a checkpoint into their own layer classes and keep each weight as a
tensor subclass holding the packed, quantized bytes (``GGMLTensor``: no ``dequantize()``, and a
storage shape that is not the weight's). The layer turns it into a weight only when it runs, through
its ``cast_bias_weight`` method — the layer-level form of ComfyUI's own cast path
(``comfy.ops.cast_bias_weight``), which every ComfyUI op calls before its matmul. Reading such a
weight's ``.data`` gives bytes, not values; :func:`layer_cast_weight` asks the layer instead.

Duck-typed like the rest of :mod:`rehyat.integrations`: nothing here imports ``comfy``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

CAST_METHOD = "cast_bias_weight"
"""Method of a custom-op layer that returns ``(weight, bias)`` as the layer computes with them."""

PATCHES_ATTRIBUTE = "patches"
"""Attribute on which ComfyUI-GGUF hangs LoRA patches of a quantized weight (applied in the cast)."""


def layer_cast_weight(layer: nn.Module, attribute: str, stored: Tensor) -> Tensor:
    """The **base** value of ``layer.<attribute>`` as the layer computes with it, in fp32.

    For a weight stored as a tensor subclass without ``dequantize()``: calls the layer's own
    ``cast_bias_weight(dtype=float32, device=<the weight's>)`` with the weight's LoRA patches (a
    ``patches`` list on the tensor, ComfyUI-GGUF's convention) set aside for the call, so a φ file
    is matched against the checkpoint, not against whatever LoRA is stacked on it.

    Raises:
        ValueError: the layer has no cast method, or it returned something that is not a tensor of
            the weight's logical size (naming the layer's and the tensor's types and what to do).
    """
    cast = getattr(layer, CAST_METHOD, None)
    if attribute != "weight" or not callable(cast):
        raise ValueError(
            f"cannot read a {type(stored).__name__} {attribute!r} of a {type(layer).__name__}: it has no "
            f"dequantize() and the layer no {CAST_METHOD}() method; load this checkpoint with ComfyUI's "
            "Load Diffusion Model or a loader whose layers dequantize through cast_bias_weight "
            "(e.g. ComfyUI-GGUF)"
        )
    with _patches_set_aside(stored), torch.no_grad():
        result: Any = cast(dtype=torch.float32, device=stored.device)
    weight = result[0] if isinstance(result, (tuple, list)) else result
    if not isinstance(weight, Tensor):
        kind = type(weight).__name__
        raise ValueError(f"{type(layer).__name__}.{CAST_METHOD}() returned a {kind}, not a weight")
    expected = _logical_shape(layer)
    if expected is not None and tuple(weight.shape) != expected:
        raise ValueError(
            f"{type(layer).__name__}.{CAST_METHOD}() returned a weight of shape {tuple(weight.shape)}; "
            f"the layer's is {expected}"
        )
    if type(weight) not in (Tensor, nn.Parameter):
        weight = weight.as_subclass(Tensor)  # the values, without the pack's tensor class
    return weight


def _logical_shape(layer: nn.Module) -> tuple[int, ...] | None:
    """(out_features, in_features) of a linear layer, else None (not checked)."""
    out_features, in_features = getattr(layer, "out_features", None), getattr(layer, "in_features", None)
    if isinstance(out_features, int) and isinstance(in_features, int):
        return (out_features, in_features)
    return None


@contextmanager
def _patches_set_aside(stored: Tensor) -> Iterator[None]:
    """Empty ``stored.patches`` (if it has a non-empty list there) for the duration; restore after."""
    patches = getattr(stored, PATCHES_ATTRIBUTE, None)
    if not isinstance(patches, list) or not patches:
        yield
        return
    setattr(stored, PATCHES_ATTRIBUTE, [])
    try:
        yield
    finally:
        setattr(stored, PATCHES_ATTRIBUTE, patches)
