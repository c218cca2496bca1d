"""Refuse non-finite tensors by name: NaN / inf never load or save silently."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def require_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise a one-line ValueError naming ``where`` and the first tensor holding NaN or ±inf.

    Args:
        tensors: name -> tensor (non-floating tensors are skipped: they cannot hold NaN).
        where: what the tensors are, for the message (e.g. ``"φ file /x/phi.safetensors"``).
    """
    for name, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        values = tensor[~finite]
        kinds = [
            label
            for label, present in (
                ("NaN", bool(torch.isnan(values).any())),
                ("inf", bool(torch.isinf(values).any())),
            )
            if present
        ]
        raise ValueError(
            f"{where}: tensor {name!r} holds {int(values.numel())} non-finite value(s) "
            f"({'/'.join(kinds)}) — refusing it (a diverged training run or a damaged file?)"
        )
