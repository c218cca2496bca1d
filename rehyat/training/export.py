"""Files a fine-tune ends with — always new files, never the user's checkpoint.

- :func:`save_comfy_lora`: the LoRA adapters in ComfyUI's LoRA key format (stock
  ``LoraLoaderModelOnly`` loads it on the base model);
- :func:`save_full_checkpoint`: the whole transformer in the original Wan key names (stock
  ``UNETLoader`` loads it from ``models/diffusion_models``), LoRA merged, φ left out (φ goes to
  its own φ file: :func:`rehyat.weights.save_phi_weights`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_save_file
from .lora import LORA_ATTR, comfy_lora_state_dict, lora_modules
from .trainable import phi_parameter_names


def _save_new(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str], path: str | os.PathLike[str]
) -> Path:
    """Publish a new safetensors file at ``path`` — atomically, and never over an existing file."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"output file name must end in .safetensors; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return atomic_save_file(tensors, metadata, path, replace=False)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, f"{path} already exists: fine-tuning never overwrites a file; choose a new name",
            str(path),
        ) from None


def _metadata(info: Mapping[str, Any] | None) -> dict[str, str]:
    return {"format": "rehyat-finetune", "training": json.dumps(dict(info or {}), sort_keys=True)}


def save_comfy_lora(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
    rename: Callable[[str], str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the model's LoRA adapters as a ComfyUI LoRA file (new file; atomic).

    Keys: ``diffusion_model.<layer>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``.
    """
    tensors = comfy_lora_state_dict(model, rename=rename, dtype=dtype)
    return _save_new(tensors, _metadata(info), path)


def base_state_dict(model: nn.Module, *, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The model's own weights: LoRA folded in (not modified in place), φ and adapters left out.

    Names are the model's (original Wan names for ComfyUI's WanModel and
    :class:`~rehyat.models.wan.WanDiT`). ``dtype`` casts floating tensors (None: keep).
    """
    skip = phi_parameter_names(model)
    deltas = {
        f"{name}.weight": getattr(module, LORA_ATTR).delta_weight() for name, module in lora_modules(model)
    }
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name in skip or f".{LORA_ATTR}." in f".{name}" or ".hybrid." in f".{name}":
            continue
        tensor = tensor.detach()
        if name in deltas:
            tensor = (tensor.float() + deltas[name].to(tensor.device)).to(tensor.dtype)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor.to("cpu", copy=True).contiguous()  # a copy: later in-place changes can't alias
    return out


def save_full_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    rename: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> Path:
    """Write the fine-tuned transformer (:func:`base_state_dict`) as a new safetensors file.

    ``rename`` maps the state dict to the original Wan names when the model uses others (e.g.
    :func:`rehyat.keymap.diffusers_state_dict_to_wan`).
    """
    sd = base_state_dict(model, dtype=dtype)
    if rename is not None:
        sd = rename(sd)
    return _save_new(sd, _metadata(info), path)
