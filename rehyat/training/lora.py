"""LoRA adapters that live inside the model's module tree, and their ComfyUI-format export.

:func:`attach_lora` gives each chosen ``nn.Linear`` a submodule ``lora`` (:class:`LoRAAdapter`:
``down`` (r × in), ``up`` (out × r), scale alpha / r) plus a forward hook that adds
``lora(input)`` to the linear's output. The base weight is never touched, the adapter is part of
``state_dict`` / ``.to()`` / DDP / offloading, and a Linear shared by two parents (ComfyUI's
ReHyAt self-attention reuses the original q/k/v/o modules) is adapted once and seen by both.
Works on any subclass of ``nn.Linear`` (ComfyUI's ``comfy.ops`` linears, diffusers', plain torch).

:func:`comfy_lora_state_dict` writes the adapters in the key format stock ComfyUI's
``LoraLoaderModelOnly`` reads: ``diffusion_model.<module>.lora_up.weight`` / ``.lora_down.weight`` /
``.alpha`` (``comfy.lora.model_lora_keys_unet`` maps ``diffusion_model.<module>`` to the weight).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..config import require_int, require_real

LORA_ATTR = "lora"  # submodule name on an adapted Linear
_HOOK_ATTR = "_rehyat_lora_hook"
COMFY_PREFIX = "diffusion_model."


class LoRAAdapter(nn.Module):
    """Low-rank update Δ(x) = up(down(x)) · alpha / rank of one linear layer (fp32 weights).

    ``up`` starts at zero, so a fresh adapter leaves the model unchanged.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        require_int("lora_rank", rank, low=1)
        require_real("lora_alpha", alpha, low=1e-6, high=1e6)
        self.rank = rank
        self.alpha = float(alpha)
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    @property
    def scale(self) -> float:
        """alpha / rank."""
        return self.alpha / self.rank

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in) → Δ (..., out) in x's dtype (runs in the adapter's dtype, or autocast's)."""
        dtype = self.down.weight.dtype if not torch.is_autocast_enabled() else x.dtype
        return (self.up(self.down(x.to(dtype))) * self.scale).to(x.dtype)

    def delta_weight(self) -> Tensor:
        """The equivalent dense update ΔW = up·down·scale, (out, in), fp32."""
        return (self.up.weight.float() @ self.down.weight.float()) * self.scale


def _lora_hook(module: nn.Linear, inputs: tuple, output: Tensor) -> Tensor:
    return output + getattr(module, LORA_ATTR)(inputs[0])


def attach_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    select: Callable[[str, nn.Linear], bool] | None = None,
) -> list[str]:
    """Give every selected ``nn.Linear`` of ``model`` a LoRA adapter; returns their module names.

    Args:
        model: any module; adapters are created on each linear's device in fp32.
        rank: r ≥ 1 (at most min(in, out) of each layer, else that layer is refused).
        alpha: scale numerator (default: ``rank``, i.e. scale 1).
        select: ``select(name, linear) -> bool`` picks layers (default: every linear).

    Raises:
        ValueError: a bad rank / alpha, or the model already has adapters.
    """
    require_int("lora_rank", rank, low=1)
    alpha = float(rank if alpha is None else alpha)
    if lora_modules(model):
        raise ValueError("the model already has LoRA adapters: detach_lora(model) first")
    names = []
    seen: set[int] = set()
    adapter_parts = {id(m) for a in model.modules() if isinstance(a, LoRAAdapter) for m in a.modules()}
    for name, module in list(model.named_modules()):  # a snapshot: adapters added below are not visited
        if not isinstance(module, nn.Linear) or id(module) in seen or id(module) in adapter_parts:
            continue
        if select is not None and not select(name, module):
            continue
        seen.add(id(module))
        if rank > min(module.in_features, module.out_features):
            raise ValueError(
                f"lora_rank {rank} exceeds the size of layer {name} "
                f"({module.out_features}×{module.in_features})"
            )
        adapter = LoRAAdapter(module.in_features, module.out_features, rank, alpha)
        adapter.to(module.weight.device)
        module.add_module(LORA_ATTR, adapter)
        setattr(module, _HOOK_ATTR, module.register_forward_hook(_lora_hook))
        names.append(name)
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(name, linear) of every adapted linear, each once (first name in ``named_modules`` order)."""
    out, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and hasattr(module, _HOOK_ATTR) and id(module) not in seen:
            seen.add(id(module))
            out.append((name, module))
    return out


def detach_lora(model: nn.Module) -> None:
    """Remove every adapter and hook (the model computes exactly as before :func:`attach_lora`)."""
    for _, module in lora_modules(model):
        getattr(module, _HOOK_ATTR).remove()
        delattr(module, _HOOK_ATTR)
        del module._modules[LORA_ATTR]


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (W += ΔW, in W's dtype) and remove the adapters."""
    for _, module in lora_modules(model):
        delta = getattr(module, LORA_ATTR).delta_weight()
        module.weight.add_(delta.to(module.weight.device, module.weight.dtype))
    detach_lora(model)


def comfy_lora_state_dict(
    model: nn.Module,
    *,
    rename: Callable[[str], str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """The adapters as a ComfyUI LoRA state dict (``LoraLoaderModelOnly`` format).

    Args:
        model: the adapted model whose module names are the original Wan key names
            (ComfyUI's WanModel, :class:`rehyat.models.wan.WanDiT`); pass ``rename`` to map other
            names (e.g. diffusers' via :func:`rehyat.keymap.diffusers_key_to_wan` on ``name + ".weight"``).
        rename: module name → original-layout module name.
        dtype: dtype of the saved tensors.

    Returns:
        ``{"diffusion_model.<name>.lora_up.weight": (out, r), ".lora_down.weight": (r, in),
        ".alpha": scalar}`` on the CPU.
    """
    out: dict[str, Tensor] = {}
    for name, module in lora_modules(model):
        adapter: LoRAAdapter = getattr(module, LORA_ATTR)
        key = COMFY_PREFIX + (rename(name) if rename else name)
        out[f"{key}.lora_up.weight"] = adapter.up.weight.detach().to("cpu", dtype).contiguous()
        out[f"{key}.lora_down.weight"] = adapter.down.weight.detach().to("cpu", dtype).contiguous()
        out[f"{key}.alpha"] = torch.tensor(adapter.alpha, dtype=dtype)
    if not out:
        raise ValueError("the model has no LoRA adapters to export")
    return out


@torch.no_grad()
def load_comfy_lora_adapters(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Set ``model``'s attached adapters from a ComfyUI-format LoRA (the inverse of
    :func:`comfy_lora_state_dict`): every adapter's ``lora_up`` / ``lora_down`` must be in ``tensors``
    with its shape, else a ValueError names the key (alpha is the adapter's own)."""
    for name, module in lora_modules(model):
        adapter: LoRAAdapter = getattr(module, LORA_ATTR)
        for part, target in (("lora_up", adapter.up.weight), ("lora_down", adapter.down.weight)):
            key = f"{COMFY_PREFIX}{name}.{part}.weight"
            if key not in tensors or tuple(tensors[key].shape) != tuple(target.shape):
                raise ValueError(f"the LoRA has no {key} of shape {tuple(target.shape)}")
            target.copy_(tensors[key])


@torch.no_grad()
def apply_comfy_lora(model: nn.Module, tensors: dict[str, Tensor], strength: float = 1.0) -> list[str]:
    """Fold a ComfyUI-format LoRA (:func:`comfy_lora_state_dict`'s keys) into ``model``'s weights.

    ``W += strength · up @ down · alpha / rank`` for every ``diffusion_model.<layer>`` of the file, in
    W's dtype; returns the layer names. A layer the model lacks, a shape that does not fit, or a
    key of another format is refused (nothing is changed then).
    """
    require_real("strength", strength, low=-100.0, high=100.0)
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(COMFY_PREFIX):
            raise ValueError(f"LoRA key {key!r} does not start with {COMFY_PREFIX!r}")
        for suffix in (".lora_up.weight", ".lora_down.weight", ".alpha"):
            if key.endswith(suffix):
                layers.setdefault(key[len(COMFY_PREFIX) : -len(suffix)], {})[suffix] = value
                break
        else:
            raise ValueError(f"LoRA key {key!r} is not a lora_up / lora_down / alpha tensor")
    deltas: list[tuple[nn.Linear, Tensor]] = []
    for name, parts in layers.items():
        if ".lora_up.weight" not in parts or ".lora_down.weight" not in parts:
            raise ValueError(f"LoRA layer {name!r} lacks its lora_up or lora_down weight")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the LoRA adapts layer {name!r}, which this model does not have") from None
        up, down = parts[".lora_up.weight"].float(), parts[".lora_down.weight"].float()  # (out, r), (r, in)
        if not isinstance(module, nn.Linear) or (up.shape[0], down.shape[1]) != tuple(module.weight.shape):
            raise ValueError(
                f"LoRA layer {name!r} is {up.shape[0]}×{down.shape[1]}; the model's is "
                f"{tuple(getattr(module, 'weight', torch.empty(0)).shape)}"
            )
        rank = down.shape[0]
        alpha = float(parts[".alpha"]) if ".alpha" in parts else float(rank)
        deltas.append((module, (up @ down) * (alpha / rank) * strength))
    for module, delta in deltas:
        module.weight.add_(delta.to(module.weight.device, module.weight.dtype))
    return list(layers)
