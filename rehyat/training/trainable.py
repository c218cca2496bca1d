"""Which parameters a fine-tune trains: φ only, φ + self-attention, everything, or LoRA + φ.

Names follow the model's own module tree: φ is every parameter inside a
:class:`~rehyat.hybrid.HybridAttention`; self-attention is ``blocks.N.self_attn.*`` (original /
ComfyUI / :class:`~rehyat.models.wan.WanDiT` names) or ``blocks.N.attn1.*`` (diffusers); LoRA
adapters go on the linear layers of the transformer blocks (self- and cross-attention q/k/v/o and
the FFN), never inside φ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..hybrid import HybridAttention
from .lora import LORA_ATTR, attach_lora

TrainableSet = Literal["phi", "phi+self_attn", "everything", "lora"]
TRAINABLE_SETS: tuple[str, ...] = ("phi", "phi+self_attn", "everything", "lora")
_SELF_ATTENTION = re.compile(r"(^|\.)blocks\.\d+\.(self_attn|attn1)\.")
_BLOCK_LINEAR = re.compile(r"(^|\.)blocks\.\d+\.")


@dataclass
class Trainable:
    """The parameters a run trains, by their (first) name in the model.

    Attributes:
        kind: the trainable set.
        parameters: name → parameter (unique objects, in ``named_parameters`` order).
        lora_layers: names of the linear layers given LoRA adapters (kind "lora").
    """

    kind: str
    parameters: dict[str, nn.Parameter]
    lora_layers: list[str]

    @property
    def count(self) -> int:
        """Number of trained scalars."""
        return sum(p.numel() for p in self.parameters.values())


def phi_parameter_names(model: nn.Module) -> set[str]:
    """Names of every parameter inside a :class:`HybridAttention` of ``model``."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, HybridAttention):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n, _ in module.named_parameters())
    return names


def is_lora_target(name: str, module: nn.Linear) -> bool:
    """Default LoRA layers: linears inside transformer blocks, outside φ and other adapters."""
    return bool(_BLOCK_LINEAR.search(name)) and ".hybrid." not in name and f".{LORA_ATTR}." not in name


def select_trainable(
    model: nn.Module,
    kind: TrainableSet,
    *,
    lora_rank: int = 16,
    lora_alpha: float | None = None,
) -> Trainable:
    """Freeze ``model`` except the chosen set (attaching LoRA adapters for "lora") and return it.

    Raises:
        ValueError: unknown set, or a set that needs φ on a model without ReHyAt blocks.
    """
    if kind not in TRAINABLE_SETS:
        raise ValueError(f"trainable must be one of {TRAINABLE_SETS}; got {kind!r}")
    lora_layers: list[str] = []
    if kind == "lora":
        lora_layers = attach_lora(model, lora_rank, lora_alpha, select=is_lora_target)
    phi = phi_parameter_names(model)
    if kind in ("phi", "phi+self_attn") and not phi:
        raise ValueError(
            f"trainable={kind!r} needs ReHyAt blocks (φ) in the model: patch it first, or use 'everything'"
        )

    def wanted(name: str) -> bool:
        if kind == "everything":
            return True
        if name in phi:
            return True
        if kind == "phi+self_attn":
            return bool(_SELF_ATTENTION.search(name))
        if kind == "lora":
            return f".{LORA_ATTR}." in name
        return False

    chosen: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():  # shared parameters appear once
        train = wanted(name)
        param.requires_grad_(train)
        if train:
            chosen[name] = param
    if not chosen:
        raise ValueError(f"trainable={kind!r} selects no parameter of this model")
    return Trainable(kind=kind, parameters=chosen, lora_layers=lora_layers)
