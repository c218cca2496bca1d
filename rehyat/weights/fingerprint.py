"""Fingerprint of a Wan model's self-attention weights: which checkpoint a φ file was made for.

The fingerprint is a few statistics of a fixed sample of every block's q, k, v, o projection
weights. It is computed from the tensors' values alone, so it is the same for the original/ComfyUI
layout (``"wan"``, often fp16 or bf16) and the diffusers layout (fp32) of the same checkpoint, and
it tells apart checkpoints that were trained separately.

What creators load, and what is fingerprinted:

* fp32 / fp16 / bf16 / ``fp8_e4m3fn`` / ``fp8_e5m2`` weights: the stored values (matched up to
  rounding, see the tolerance note below).
* ComfyUI's ``fp8_scaled`` checkpoints: the fp8 ``<name>.weight`` times its scalar
  ``<name>.scale_weight`` — the weight the model computes with.
* Tensor subclasses that dequantize (ComfyUI's mixed-precision ``QuantizedTensor``): their
  dequantized values.
* Tensor subclasses without ``dequantize()`` that other packs' custom layers turn into a weight
  when they run (ComfyUI-GGUF's ``GGMLTensor``): the value the layer computes with, read through
  a ``weight_reader`` the integration passes (ComfyUI's: the layer's own cast path, see
  :func:`rehyat.integrations.comfyui_weights.layer_cast_weight`). Their raw storage is never read.
* A model with weight patches (LoRA) in a ComfyUI ``ModelPatcher``: the **base** weights, always —
  whether or not the patches are currently applied in place (pass the patcher's backups as
  ``originals``). A φ file identifies the checkpoint it was distilled from; LoRAs are stacked per
  graph, so the same φ loads with or without them, and the answer never depends on whether the
  model happens to be loaded at the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import require_int
from ..keymap import LAYOUTS, Layout, self_attention_keys
from .base_model import BaseModelInfo

FINGERPRINT_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
"""Self-attention weights (``<role>.weight``) that enter the fingerprint, per block, in this order."""

FINGERPRINT_STATS: tuple[str, ...] = ("mean", "rms", "proj")
"""Statistics recorded per weight tensor, in this order (see :func:`self_attention_fingerprint`)."""

FINGERPRINT_SAMPLES = 4096
"""At most this many values of each weight tensor are sampled."""

SCALE_SUFFIX = "scale_weight"
"""Sibling of ``<name>.weight`` in ComfyUI ``fp8_scaled`` checkpoints: the real weight is weight × scale."""

_PER_BLOCK = len(FINGERPRINT_ROLES) * len(FINGERPRINT_STATS)

TensorGetter = Callable[[str], Tensor]

WeightReader = Callable[[nn.Module, str, Tensor], Tensor]
"""``reader(layer, attribute, stored)`` → the value ``layer`` computes with for ``stored`` (its
``attribute``, e.g. ``"weight"``); used for tensor subclasses that cannot be read on their own."""


def fingerprint_length(num_layers: int) -> int:
    """Number of floats in the fingerprint of a ``num_layers``-block model."""
    return num_layers * _PER_BLOCK


def _sample_indices(shape: torch.Size) -> Tensor:
    """Flat indices of the fixed strided sample of a tensor of ``shape`` (≤ FINGERPRINT_SAMPLES).

    The stride is made coprime with the last dimension so that the sample walks through every
    column of a weight matrix instead of a handful of them. It depends on the shape only, and the
    shapes are the same in both layouts.
    """
    numel = math.prod(shape)
    if numel <= FINGERPRINT_SAMPLES:
        return torch.arange(numel)
    stride = numel // FINGERPRINT_SAMPLES
    cols = shape[-1] if len(shape) else 1
    while stride > 1 and math.gcd(stride, cols) != 1:
        stride -= 1
    return torch.arange(FINGERPRINT_SAMPLES) * stride


def _sign_pattern(count: int) -> Tensor:
    """A fixed, balanced ±1 pattern (Knuth multiplicative hash of the index), fp64."""
    index = torch.arange(count, dtype=torch.int64)
    bits = (((index * 2654435761) % (1 << 32)) >> 16) & 1
    return 1.0 - 2.0 * bits.to(torch.float64)


@torch.inference_mode()  # weights made under inference mode can be read (viewed) outside it too
def tensor_statistics(tensor: Tensor, scale: Tensor | float | None = None) -> tuple[float, float, float]:
    """``(mean, rms, proj)`` of the fixed sample of ``tensor`` (times ``scale``), in fp64 on the CPU.

    ``proj`` is the sample's dot product with a fixed ±1 pattern divided by the sample size. Only
    the sampled values are converted, so a large fp16/bf16/fp8 tensor is never copied whole (a
    quantized tensor subclass with ``dequantize()`` is dequantized first).

    Args:
        tensor: the weight.
        scale: a scalar the stored values are multiplied by (``fp8_scaled``'s ``scale_weight``);
            a non-scalar scale is refused.
    """
    tensor = _plain_tensor(tensor)
    if tensor.numel() == 0:
        raise ValueError(f"cannot fingerprint an empty tensor of shape {tuple(tensor.shape)}")
    flat = tensor.detach().reshape(-1)
    index = _sample_indices(tensor.shape).to(flat.device)
    sample = flat.index_select(0, index).to(device="cpu", dtype=torch.float32).to(torch.float64)
    if scale is not None:
        sample = sample * _scalar_scale(scale)
    if not bool(torch.isfinite(sample).all()):
        raise ValueError("cannot fingerprint a tensor with non-finite values")
    count = sample.numel()
    mean = float(sample.sum() / count)
    rms = float(torch.sqrt((sample * sample).sum() / count))
    proj = float((sample * _sign_pattern(count)).sum() / count)
    return mean, rms, proj


def _plain_tensor(tensor: Any) -> Tensor:
    """``tensor`` as a plain ``torch.Tensor``: quantized subclasses are dequantized, others refused."""
    if not isinstance(tensor, Tensor):
        raise ValueError(f"expected a torch.Tensor; got {type(tensor).__name__}")
    if type(tensor) not in (Tensor, nn.Parameter):
        if needs_layer_to_read(tensor):
            raise ValueError(
                f"cannot read the values of a {type(tensor).__name__} (no dequantize(), and no layer "
                "to read it through: fingerprint the loaded model, not its state dict)"
            )
        tensor = tensor.dequantize()
        if not isinstance(tensor, Tensor) or type(tensor) not in (Tensor, nn.Parameter):
            raise ValueError(f"dequantize() of a weight returned a {type(tensor).__name__}, not a tensor")
    return tensor


def _scalar_scale(scale: Tensor | float) -> float:
    """A weight scale as a finite float; only per-tensor (scalar) scales are supported."""
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(
                f"per-channel weight scales (shape {tuple(scale.shape)}) are not supported; "
                "only ComfyUI fp8_scaled's per-tensor scale_weight is"
            )
        scale = float(scale.detach().to(device="cpu", dtype=torch.float64).reshape(()))
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"weight scale must be a finite number; got {scale!r}")
    return float(scale)


def self_attention_fingerprint(get_tensor: TensorGetter, num_layers: int, layout: Layout) -> list[float]:
    """Fingerprint of a Wan transformer's self-attention weights, independent of layout and dtype.

    For every block ``0..num_layers-1`` and every role in :data:`FINGERPRINT_ROLES`, the
    ``<role>.weight`` tensor (named via :func:`rehyat.keymap.self_attention_keys`) contributes
    ``[mean, rms, proj]`` of a fixed strided sample of at most :data:`FINGERPRINT_SAMPLES` values
    (see :func:`tensor_statistics`). Compare two fingerprints with :func:`fingerprints_match`.

    Args:
        get_tensor: returns the tensor stored under a key of ``layout`` (without any prefix), e.g.
            ``sd.__getitem__``; a ``KeyError`` becomes a ``ValueError`` naming the key.
        num_layers: number of transformer blocks.
        layout: ``"wan"`` (original / ComfyUI names) or ``"diffusers"``.

    A ``<role>.scale_weight`` next to a weight (ComfyUI ``fp8_scaled``) multiplies it.

    Returns:
        ``fingerprint_length(num_layers)`` floats.
    """
    require_int("num_layers", num_layers, low=1)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    values: list[float] = []
    for block in range(num_layers):
        keys = self_attention_keys(block, layout)
        for role in FINGERPRINT_ROLES:
            key = f"{keys[role]}.weight"
            try:
                tensor = get_tensor(key)
            except KeyError:
                raise ValueError(
                    f"cannot fingerprint the base model: it has no {layout}-layout self-attention "
                    f"weight {key!r} (block {block} of {num_layers})"
                ) from None
            scale = _optional(get_tensor, f"{keys[role]}.{SCALE_SUFFIX}")
            try:
                values.extend(tensor_statistics(tensor, scale))
            except ValueError as err:
                raise ValueError(f"cannot fingerprint {key!r}: {err}") from None
    return values


def _optional(get_tensor: TensorGetter, key: str) -> Tensor | None:
    """``get_tensor(key)``, or None when there is no such tensor."""
    try:
        return get_tensor(key)
    except KeyError:
        return None


def infer_num_layers(keys: Iterable[str], layout: Layout, prefix: str = "") -> int:
    """Number of blocks of a state dict, from its ``<prefix>blocks.N.<q>.weight`` keys.

    Raises:
        ValueError: if there is no such key or the block indices are not ``0..L-1``.
    """
    q_suffix = self_attention_keys(0, layout)["q"].split(".", 2)[2] + ".weight"  # e.g. self_attn.q.weight
    found: set[int] = set()
    head = f"{prefix}blocks."
    for key in keys:
        if not key.startswith(head):
            continue
        index, _, rest = key[len(head) :].partition(".")
        if rest == q_suffix and index.isdigit():
            found.add(int(index))
    if not found:
        raise ValueError(f"no {layout}-layout self-attention weights '{head}N.{q_suffix}' found")
    expected = set(range(max(found) + 1))
    if found != expected:
        raise ValueError(f"self-attention blocks are not contiguous: missing {sorted(expected - found)}")
    return len(found)


def fingerprint_state_dict(
    sd: Mapping[str, Tensor], layout: Layout, prefix: str = "", num_layers: int | None = None
) -> list[float]:
    """:func:`self_attention_fingerprint` of a state dict whose keys carry ``prefix``.

    ``num_layers`` defaults to :func:`infer_num_layers` of the keys.
    """
    if num_layers is None:
        num_layers = infer_num_layers(sd.keys(), layout, prefix)
    return self_attention_fingerprint(lambda key: sd[prefix + key], num_layers, layout)


def module_tensor_getter(
    module: nn.Module,
    prefix: str = "",
    originals: Mapping[str, Tensor] | None = None,
    weight_reader: WeightReader | None = None,
) -> TensorGetter:
    """A getter for :func:`self_attention_fingerprint` reading ``module``'s parameters/buffers.

    ``prefix`` is the dotted path of the transformer inside ``module`` (e.g. ``"diffusion_model."``
    for a ComfyUI ``BaseModel``); missing names raise ``KeyError``. No layout is detected: the
    caller passes the layout to the fingerprint function.

    ``originals`` maps full names (``prefix + key``) to the unpatched tensors of weights that are
    currently patched in place (a ComfyUI ``ModelPatcher``'s ``backup``); they are read instead of
    the module's, so the fingerprint is the base model's whether or not patches are applied.

    ``weight_reader`` reads a parameter stored as a tensor subclass that has no ``dequantize()``
    (e.g. a GGUF-quantized weight whose layer dequantizes it when it runs): it gets the owning
    layer, the attribute name and the stored tensor, and returns the weight the layer computes with.
    """

    def get(key: str) -> Tensor:
        name = prefix + key
        if originals is not None and name in originals:
            return originals[name]
        try:
            tensor = module.get_parameter(name)
        except AttributeError:
            try:
                return module.get_buffer(name)
            except AttributeError:
                raise KeyError(name) from None
        if weight_reader is not None and needs_layer_to_read(tensor):
            owner, _, attribute = name.rpartition(".")
            return weight_reader(module.get_submodule(owner), attribute, tensor)
        return tensor

    return get


def needs_layer_to_read(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a subclass whose values only its layer can produce (no ``dequantize()``)."""
    kind = type(tensor)
    if kind in (Tensor, nn.Parameter):
        return False
    return getattr(kind, "dequantize", Tensor.dequantize) is Tensor.dequantize


def fingerprint_module(
    module: nn.Module,
    layout: Layout,
    prefix: str = "",
    num_layers: int | None = None,
    originals: Mapping[str, Tensor] | None = None,
    weight_reader: WeightReader | None = None,
) -> list[float]:
    """:func:`self_attention_fingerprint` of a loaded ``torch.nn.Module`` (no layout detection).

    ``num_layers`` defaults to :func:`infer_num_layers` of the module's parameter names;
    ``originals`` and ``weight_reader`` as in :func:`module_tensor_getter`.
    """
    if num_layers is None:
        names = [name for name, _ in module.named_parameters()]
        names += [name for name, _ in module.named_buffers()]
        num_layers = infer_num_layers(names, layout, prefix)
    getter = module_tensor_getter(module, prefix, originals, weight_reader)
    return self_attention_fingerprint(getter, num_layers, layout)


# Tolerance of fingerprints_match, and why.
#
# Rounding to a narrower float format perturbs every sampled value by |δx_i| ≤ u·|x_i|, with unit
# roundoff u = 2^-8 ≈ 3.9e-3 for bf16 and 2^-11 ≈ 4.9e-4 for fp16 (fp32 → fp64 is exact; the
# statistics are summed in fp64, so their own rounding error is ~1e-16 and negligible). Hence, for a
# sample of n values with root-mean-square `rms`:
#   |Δmean|, |Δproj| ≤ Σ|δx_i| / n ≤ u · mean|x| ≤ u · rms      (|±1| = 1; Cauchy–Schwarz)
#   |Δrms|           ≤ rms(δx)        ≤ u · rms                  (triangle inequality in ℓ2)
# So every statistic of a tensor moves by at most u·rms — a worst-case bound, whatever the values.
# fingerprints_match therefore allows, per tensor, |a − b| ≤ atol + rtol·max(rms_a, rms_b) for all
# three statistics: rtol = 1e-2 is 2.5× the bf16 bound (and still covers one side in bf16 and the
# other in fp16: 3.9e-3 + 4.9e-4), atol = 1e-4 only matters for (near-)zero tensors and fp16's
# subnormal range (absolute error ≤ 2^-25 ≈ 3e-8). fp8 (u = 2^-4) is not covered by the worst-case
# bound; its rounding errors are, in practice, zero-mean and independent, moving the statistics by
# ~u·rms/√(3n) ≈ 6e-4·rms, well inside the tolerance (fp8_scaled: the same, after the scale).
#
# Discrimination: for two separately trained checkpoints, mean and proj of the same tensor differ
# by ~rms·√(2/n) ≈ 0.022·rms (n = 4096), so a single statistic falls inside the tolerance with
# probability ≈ 0.35, and all 8 signed statistics of one block with probability ≈ 2e-4 — negligible
# over the 30 or 40 blocks of a Wan model. Fine-tunes that move these statistics by less than ~1 %
# of rms (e.g. light LoRA merges) are, by design, not told apart from their base.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-4


def _first_mismatch(a: Sequence[float], b: Sequence[float], rtol: float, atol: float) -> int | None:
    """Index of the first tensor (triple) where ``a`` and ``b`` differ beyond tolerance, else None.

    Returns ``-1`` when the lengths differ or are not a multiple of the triple size.
    """
    width = len(FINGERPRINT_STATS)
    if len(a) != len(b) or len(a) % width:
        return -1
    rms = FINGERPRINT_STATS.index("rms")
    for t in range(len(a) // width):
        ta, tb = a[t * width : (t + 1) * width], b[t * width : (t + 1) * width]
        tol = atol + rtol * max(abs(ta[rms]), abs(tb[rms]))
        if any(not abs(x - y) <= tol for x, y in zip(ta, tb, strict=True)):  # `not <=` also catches NaN
            return t
    return None


def fingerprints_match(
    a: Sequence[float], b: Sequence[float], rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL
) -> bool:
    """Whether two fingerprints describe the same weights (up to fp16/bf16 rounding).

    Per weight tensor, each of ``mean``, ``rms`` and ``proj`` may differ by at most
    ``atol + rtol · max(rms_a, rms_b)``; see the comment above this function in the source for why
    these defaults cover bf16 rounding with margin. Fingerprints of different lengths never match.
    """
    return _first_mismatch(a, b, rtol, atol) is None


def check_fingerprint_values(fingerprint: Any, base: BaseModelInfo, what: str) -> list[float]:
    """``fingerprint`` as a list of finite floats of the right length for ``base``."""
    if not isinstance(fingerprint, (list, tuple)):
        raise ValueError(f"{what} must be a list of floats; got {type(fingerprint).__name__}")
    values = []
    for x in fingerprint:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ValueError(f"{what} must contain finite numbers only; got {x!r}")
        values.append(float(x))
    expected = fingerprint_length(base.num_layers)
    if len(values) != expected:
        raise ValueError(
            f"{what} has {len(values)} values; a {base.num_layers}-layer model's has {expected} "
            f"({len(FINGERPRINT_ROLES)} weights × {len(FINGERPRINT_STATS)} statistics per block)"
        )
    return values
