"""φ tensors: their names and shapes, and copying them out of / into HybridAttention modules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..config import FeatureMapConfig
from ..hybrid import HybridAttention
from .base_model import BaseModelInfo

PHI_MAPS: tuple[str, ...] = ("phi_q", "phi_k")
PHI_PARAMS: tuple[str, ...] = ("weight1", "bias1", "weight2", "bias2")


def phi_key(block: int, phi: str, param: str) -> str:
    """Tensor name in a φ file, e.g. ``blocks.3.phi_q.weight1``."""
    return f"blocks.{block}.{phi}.{param}"


def expected_phi_shapes(base: BaseModelInfo, feature_map: FeatureMapConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each φ parameter (``"phi_q.weight1"`` …) of one block of ``base``."""
    heads, head_dim = base.num_heads, base.head_dim
    hidden, out = feature_map.hidden_dim, feature_map.feature_dim
    per_map = {
        "weight1": (heads, head_dim, hidden),
        "bias1": (heads, 1, hidden),
        "weight2": (heads, hidden, out),
        "bias2": (heads, 1, out),
    }
    return {f"{phi}.{param}": shape for phi in PHI_MAPS for param, shape in per_map.items()}


def _phi_parameters(hybrid: Mapping[int, HybridAttention]) -> dict[str, nn.Parameter]:
    """``blocks.{i}.phi_x.param`` -> the module's parameter, checking block indices and names."""
    params: dict[str, nn.Parameter] = {}
    expected_names = {f"{phi}.{param}" for phi in PHI_MAPS for param in PHI_PARAMS}
    for block in sorted(hybrid):
        module = hybrid[block]
        if not isinstance(module, HybridAttention):
            raise ValueError(f"block {block}: expected a HybridAttention; got {type(module).__name__}")
        if module.block_index != block:
            raise ValueError(
                f"HybridAttention stored under block {block} says block_index={module.block_index}"
            )
        named = dict(module.feature_maps.named_parameters())
        if set(named) != expected_names:
            raise ValueError(
                f"block {block}: feature maps have parameters {sorted(named)}; "
                f"expected {sorted(expected_names)}"
            )
        for name in sorted(named):
            params[f"blocks.{block}.{name}"] = named[name]
    return params


def collect_phi_tensors(hybrid: Mapping[int, HybridAttention]) -> dict[str, Tensor]:
    """φq / φk parameters of every block as ``blocks.{i}.phi_q.weight1`` … tensors (CPU, fp32).

    The tensors are detached and contiguous; when a parameter already is a contiguous fp32 CPU
    tensor the returned tensor shares its storage (no copy), so clone it before changing it.
    """
    return {
        key: param.detach().to(device="cpu", dtype=torch.float32).contiguous()
        for key, param in _phi_parameters(hybrid).items()
    }


def _split_key(key: str) -> str:
    """``blocks.3.phi_q.weight1`` -> ``block 3, phi_q.weight1`` for messages."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks":
        return f"block {parts[1]}, {parts[2]}"
    return repr(key)


def _describe_keys(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(_split_key(k) for k in keys[:limit])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def apply_phi_tensors(hybrid: Mapping[int, HybridAttention], tensors: Mapping[str, Tensor]) -> None:
    """Copy ``tensors`` into the φ parameters of ``hybrid`` (strict, all-or-nothing).

    Everything is checked before any parameter changes; values are converted to each parameter's
    dtype and device.

    Raises:
        ValueError: for a missing, unexpected or mis-shaped tensor (naming block, parameter and,
            for shapes, both shapes).
    """
    params = _phi_parameters(hybrid)
    missing = set(params) - set(tensors)
    if missing:
        raise ValueError(f"φ tensors missing for {_describe_keys(missing)}")
    unexpected = set(tensors) - set(params)
    if unexpected:
        raise ValueError(
            f"φ tensors for parameters these modules do not have: {_describe_keys(unexpected)} "
            f"(converted blocks: {sorted(hybrid)})"
        )
    for key, param in params.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"φ tensor for {_split_key(key)} has shape {tuple(value.shape)} but the module's "
                f"parameter has shape {tuple(param.shape)}"
            )
        if not value.is_floating_point():
            raise ValueError(f"φ tensor for {_split_key(key)} has non-float dtype {value.dtype}")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


def check_phi_shapes(
    tensors: Mapping[str, Tensor],
    blocks: Sequence[int],
    feature_map: FeatureMapConfig,
    base: BaseModelInfo,
    whose: str,
) -> None:
    """Raise unless every block's φ tensors have the shapes ``base`` and ``feature_map`` imply."""
    shapes = expected_phi_shapes(base, feature_map)
    for block in blocks:
        for name, shape in shapes.items():
            key = f"blocks.{block}.{name}"
            if key not in tensors:
                raise ValueError(f"φ file has no tensor for block {block}, {name}")
            actual = tuple(tensors[key].shape)
            if actual != shape:
                raise ValueError(
                    f"φ file tensor for block {block}, {name} has shape {actual} but {whose} needs "
                    f"{shape} (heads={base.num_heads} × head_dim={base.head_dim}, "
                    f"hidden_dim={feature_map.hidden_dim}, feature_dim={feature_map.feature_dim})"
                )
