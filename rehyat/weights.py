"""φ weight files: save, load and check the learned feature maps of converted blocks (safetensors only).

A φ file holds the φq / φk parameters of every converted block of one Wan2.1 model, plus string
metadata that says what they belong to:

* ``format`` = ``"rehyat-phi"`` and ``format_version`` = ``"1"``;
* ``conversion_config``: :meth:`ConversionConfig.to_dict` as JSON (φ shape, chunking, blocks);
* ``block_indices``: JSON list of the converted block indices;
* ``base_model``: :meth:`BaseModelInfo.to_dict` as JSON (dim, heads, layers);
* ``base_fingerprint``: JSON list of floats, see :func:`self_attention_fingerprint`;
* ``rehyat_version``: the package version that wrote the file.

Tensors are named ``blocks.{i}.phi_q.weight1`` … ``blocks.{i}.phi_k.bias2`` and stored contiguous in
fp32. Files are only ever read with ``safetensors`` (never ``torch.load`` / pickle), and written
atomically (temporary file in the same directory, fsync, ``os.replace``).

The base-model fingerprint is a few statistics of a fixed sample of every block's q, k, v, o
projection weights. It is computed from the tensors' values alone, so it is the same for the
original/ComfyUI layout (``"wan"``, often fp16 or bf16) and the diffusers layout (fp32) of the
same checkpoint, and it tells apart checkpoints that were trained separately.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from .config import ConversionConfig, FeatureMapConfig, require_int
from .hybrid import HybridAttention
from .keymap import LAYOUTS, Layout, self_attention_keys

FORMAT = "rehyat-phi"
"""Value of the ``format`` metadata field of every φ file."""

FORMAT_VERSION = 1
"""The φ file format version this module writes, and the newest it reads."""

PHI_MAPS: tuple[str, ...] = ("phi_q", "phi_k")
PHI_PARAMS: tuple[str, ...] = ("weight1", "bias1", "weight2", "bias2")

FINGERPRINT_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
"""Self-attention weights (``<role>.weight``) that enter the fingerprint, per block, in this order."""

FINGERPRINT_STATS: tuple[str, ...] = ("mean", "rms", "proj")
"""Statistics recorded per weight tensor, in this order (see :func:`self_attention_fingerprint`)."""

FINGERPRINT_SAMPLES = 4096
"""At most this many values of each weight tensor are sampled."""

_PER_BLOCK = len(FINGERPRINT_ROLES) * len(FINGERPRINT_STATS)

TensorGetter = Callable[[str], Tensor]


# ------------------------------------------------------------------------------------------------
# base model description
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelInfo:
    """The shape of the Wan transformer a φ file was made for.

    Attributes:
        dim: model width (1536 for Wan2.1-1.3B, 5120 for 14B).
        num_heads: attention heads per block (12 / 40); ``dim`` must be a multiple.
        num_layers: number of transformer blocks (30 / 40).
    """

    dim: int
    num_heads: int
    num_layers: int

    def __post_init__(self) -> None:
        for name in ("dim", "num_heads", "num_layers"):
            require_int(f"BaseModelInfo.{name}", getattr(self, name), low=1)
        if self.dim % self.num_heads:
            raise ValueError(
                f"BaseModelInfo.dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads

    def describe(self) -> str:
        """Human-readable form used in error messages, e.g. ``dim=1536, heads=12, layers=30``."""
        return f"dim={self.dim}, heads={self.num_heads}, layers={self.num_layers}"

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form (JSON-serialisable)."""
        return {"dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseModelInfo:
        """Inverse of :meth:`to_dict`; missing or unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"BaseModelInfo data must be a mapping; got {type(data).__name__}")
        names = ("dim", "num_heads", "num_layers")
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(
                f"BaseModelInfo needs exactly the fields {list(names)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(dim=data["dim"], num_heads=data["num_heads"], num_layers=data["num_layers"])


# ------------------------------------------------------------------------------------------------
# fingerprint of the base model's self-attention weights
# ------------------------------------------------------------------------------------------------


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


def tensor_statistics(tensor: Tensor) -> tuple[float, float, float]:
    """``(mean, rms, proj)`` of the fixed sample of ``tensor``, computed in fp64 on the CPU.

    ``proj`` is the sample's dot product with a fixed ±1 pattern divided by the sample size. Only
    the sampled values are converted, so a large fp16/bf16 tensor is never copied whole.
    """
    if not isinstance(tensor, Tensor):
        raise ValueError(f"expected a torch.Tensor; got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise ValueError(f"cannot fingerprint an empty tensor of shape {tuple(tensor.shape)}")
    flat = tensor.detach().reshape(-1)
    index = _sample_indices(tensor.shape).to(flat.device)
    sample = flat.index_select(0, index).to(device="cpu", dtype=torch.float32).to(torch.float64)
    if not bool(torch.isfinite(sample).all()):
        raise ValueError("cannot fingerprint a tensor with non-finite values")
    count = sample.numel()
    mean = float(sample.sum() / count)
    rms = float(torch.sqrt((sample * sample).sum() / count))
    proj = float((sample * _sign_pattern(count)).sum() / count)
    return mean, rms, proj


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

    Returns:
        ``fingerprint_length(num_layers)`` floats.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer ≥ 1; got {num_layers!r}")
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
            try:
                values.extend(tensor_statistics(tensor))
            except ValueError as err:
                raise ValueError(f"cannot fingerprint {key!r}: {err}") from None
    return values


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


def module_tensor_getter(module: nn.Module, prefix: str = "") -> TensorGetter:
    """A getter for :func:`self_attention_fingerprint` reading ``module``'s parameters/buffers.

    ``prefix`` is the dotted path of the transformer inside ``module`` (e.g. ``"diffusion_model."``
    for a ComfyUI ``BaseModel``); missing names raise ``KeyError``. No layout is detected: the
    caller passes the layout to the fingerprint function.
    """

    def get(key: str) -> Tensor:
        name = prefix + key
        try:
            return module.get_parameter(name)
        except AttributeError:
            pass
        try:
            return module.get_buffer(name)
        except AttributeError:
            raise KeyError(name) from None

    return get


def fingerprint_module(
    module: nn.Module, layout: Layout, prefix: str = "", num_layers: int | None = None
) -> list[float]:
    """:func:`self_attention_fingerprint` of a loaded ``torch.nn.Module`` (no layout detection).

    ``num_layers`` defaults to :func:`infer_num_layers` of the module's parameter names.
    """
    if num_layers is None:
        names = [name for name, _ in module.named_parameters()]
        names += [name for name, _ in module.named_buffers()]
        num_layers = infer_num_layers(names, layout, prefix)
    return self_attention_fingerprint(module_tensor_getter(module, prefix), num_layers, layout)


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
# ~u·rms/√(3n) ≈ 6e-4·rms, well inside the tolerance.
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


# ------------------------------------------------------------------------------------------------
# φ tensors <-> HybridAttention modules
# ------------------------------------------------------------------------------------------------


@dataclass
class PhiWeights:
    """The content of a φ file.

    Attributes:
        config: the conversion config the φ were trained with.
        blocks: converted block indices (sorted).
        base: the base model the φ were made for.
        fingerprint: the base model's :func:`self_attention_fingerprint`.
        tensors: ``blocks.{i}.phi_q.weight1`` … ``blocks.{i}.phi_k.bias2``, fp32 on the CPU.
        format_version: format version of the file they were read from.
    """

    config: ConversionConfig
    blocks: tuple[int, ...]
    base: BaseModelInfo
    fingerprint: list[float]
    tensors: dict[str, Tensor]
    format_version: int = FORMAT_VERSION


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


# ------------------------------------------------------------------------------------------------
# saving
# ------------------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_fingerprint(fingerprint: Any, base: BaseModelInfo, what: str) -> list[float]:
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


def save_phi_weights(
    path: str | os.PathLike[str],
    hybrid: Mapping[int, HybridAttention],
    config: ConversionConfig,
    base: BaseModelInfo,
    fingerprint: list[float],
) -> Path:
    """Write the φ of ``hybrid`` with their metadata to ``path`` atomically.

    Args:
        path: destination file (its directory must exist); an existing file is replaced only
            once the new one is complete.
        hybrid: converted block index -> its :class:`HybridAttention`.
        config: the conversion config; its resolved blocks must be exactly ``hybrid``'s keys and
            its attention config must be every module's config.
        base: the base model (its heads/head_dim must match the modules).
        fingerprint: the base model's :func:`self_attention_fingerprint`.

    Returns:
        The path written.
    """
    path = Path(path)
    if not isinstance(config, ConversionConfig):
        raise ValueError(f"config must be a ConversionConfig; got {type(config).__name__}")
    if not isinstance(base, BaseModelInfo):
        raise ValueError(f"base must be a BaseModelInfo; got {type(base).__name__}")
    if not hybrid:
        raise ValueError("no converted blocks: there are no φ weights to save")
    blocks = tuple(sorted(hybrid))
    resolved = config.resolve_blocks(base.num_layers)
    if blocks != resolved:
        raise ValueError(
            f"the modules are for blocks {list(blocks)} but the conversion config selects blocks "
            f"{list(resolved)} of a {base.num_layers}-layer model"
        )
    for block in blocks:
        module = hybrid[block]
        if isinstance(module, HybridAttention):
            if module.config != config.attention:
                raise ValueError(
                    f"block {block}'s attention config {module.config} differs from the conversion "
                    f"config's {config.attention}"
                )
            phi = module.feature_maps.phi_q
            if (phi.num_heads, phi.head_dim) != (base.num_heads, base.head_dim):
                raise ValueError(
                    f"block {block} has heads={phi.num_heads} × head_dim={phi.head_dim} but the base "
                    f"model ({base.describe()}) has heads={base.num_heads} × head_dim={base.head_dim}"
                )
    fingerprint = _check_fingerprint(fingerprint, base, "fingerprint")
    tensors = collect_phi_tensors(hybrid)

    from . import __version__  # late import: the package may import this module

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "conversion_config": _json(config.to_dict()),
        "block_indices": _json(list(blocks)),
        "base_model": _json(base.to_dict()),
        "base_fingerprint": _json(fingerprint),
        "rehyat_version": str(__version__),
    }
    _atomic_save(tensors, metadata, path)
    return path


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    """safetensors-save to a temporary sibling file, fsync it, then ``os.replace`` it to ``path``."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        mode = path.stat().st_mode & 0o777  # keep the permissions of a file being replaced
    except FileNotFoundError:
        mode = 0o644  # mkstemp would create 0600
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename (POSIX; silently skipped where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# loading and checking
# ------------------------------------------------------------------------------------------------


def _metadata_json(metadata: Mapping[str, str], name: str, path: Path) -> Any:
    if name not in metadata:
        raise ValueError(f"φ file {path} has no {name!r} metadata field (damaged or hand-made file?)")
    try:
        return json.loads(metadata[name])
    except json.JSONDecodeError as err:
        raise ValueError(f"φ file {path}: metadata field {name!r} is not valid JSON ({err})") from None


def _check_phi_shapes(
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


def load_phi_weights(path: str | os.PathLike[str]) -> PhiWeights:
    """Read and validate a φ file (safetensors only; never ``torch.load`` / pickle).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for a file that is not safetensors, not a ReHyAt φ file, written by a newer
            format version, or whose metadata and tensors disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"φ file {path} does not exist (or is not a file)")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            version = _check_format(metadata, path)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None

    try:
        config = ConversionConfig.from_dict(_metadata_json(metadata, "conversion_config", path))
    except (TypeError, ValueError) as err:
        raise ValueError(f"φ file {path}: invalid conversion_config: {err}") from None
    try:
        base = BaseModelInfo.from_dict(_metadata_json(metadata, "base_model", path))
    except (TypeError, ValueError) as err:
        raise ValueError(f"φ file {path}: invalid base_model: {err}") from None
    raw_blocks = _metadata_json(metadata, "block_indices", path)
    if (
        not isinstance(raw_blocks, list)
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in raw_blocks)
        or raw_blocks != sorted(set(raw_blocks))
    ):
        raise ValueError(f"φ file {path}: block_indices must be increasing block indices; got {raw_blocks!r}")
    blocks = tuple(raw_blocks)
    fingerprint = _check_fingerprint(
        _metadata_json(metadata, "base_fingerprint", path), base, f"φ file {path}: base_fingerprint"
    )
    try:
        resolved = config.resolve_blocks(base.num_layers)
    except ValueError as err:
        raise ValueError(f"φ file {path}: conversion_config does not fit its base model: {err}") from None
    if resolved != blocks:
        raise ValueError(
            f"φ file {path}: block_indices {list(blocks)} disagree with the conversion config's "
            f"blocks {list(resolved)}"
        )

    expected = {phi_key(b, phi, p) for b in blocks for phi in PHI_MAPS for p in PHI_PARAMS}
    missing = expected - set(tensors)
    if missing:
        raise ValueError(f"φ file {path} is missing tensors for {_describe_keys(missing)}")
    unexpected = set(tensors) - expected
    if unexpected:
        raise ValueError(
            f"φ file {path} has tensors outside its listed blocks {list(blocks)}: "
            f"{_describe_keys(unexpected)}"
        )
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(
                f"φ file {path}: tensor for {_split_key(key)} has non-float dtype {tensor.dtype}"
            )
        tensors[key] = tensor.to(torch.float32)
    _check_phi_shapes(tensors, blocks, config.attention.feature_map, base, "the file's own metadata")
    return PhiWeights(config, blocks, base, fingerprint, tensors, version)


def _check_format(metadata: Mapping[str, str], path: Path) -> int:
    """The file's format version; raises for a non-ReHyAt file or a newer version."""
    if metadata.get("format") != FORMAT:
        found = f"format={metadata['format']!r}" if "format" in metadata else "no 'format' metadata"
        raise ValueError(
            f"{path} is a safetensors file but not a ReHyAt φ file ({found}; expected {FORMAT!r}) — "
            f"is it a model checkpoint or LoRA instead?"
        )
    raw = metadata.get("format_version", "")
    try:
        version = int(raw)
    except ValueError:
        raise ValueError(f"φ file {path} has an invalid format_version {raw!r}") from None
    if version > FORMAT_VERSION:
        writer = metadata.get("rehyat_version", "unknown")
        raise ValueError(
            f"φ file {path} has format_version {version} (written by ComfyUI-ReHyAt {writer}); this "
            f"version reads format_version ≤ {FORMAT_VERSION}: update ComfyUI-ReHyAt"
        )
    if version < 1:
        raise ValueError(f"φ file {path} has an unsupported format_version {version}")
    return version


def check_compatible(phi: PhiWeights, base: BaseModelInfo, fingerprint: list[float] | None = None) -> None:
    """Raise ``ValueError`` unless ``phi`` fits the model described by ``base`` (and ``fingerprint``).

    Checks, in order: width and heads, block range, layer count, φ tensor shapes (heads ×
    head_dim and the config's feature-map widths) and — when ``fingerprint`` is given — the base
    model's self-attention fingerprint. Messages name both the file's and the model's side.
    """
    made_for = phi.base
    both = f"φ file was made for {made_for.describe()} but this model has {base.describe()}"
    if (made_for.dim, made_for.num_heads) != (base.dim, base.num_heads):
        raise ValueError(both)
    out_of_range = [b for b in phi.blocks if b >= base.num_layers]
    if out_of_range:
        raise ValueError(
            f"φ file blocks {out_of_range} out of range for a {base.num_layers}-block model "
            f"(blocks 0..{base.num_layers - 1}; the file converts blocks {list(phi.blocks)})"
        )
    if made_for.num_layers != base.num_layers:
        raise ValueError(both)
    _check_phi_shapes(phi.tensors, phi.blocks, phi.config.attention.feature_map, base, "this model")
    if fingerprint is None:
        return
    where = _first_mismatch(phi.fingerprint, fingerprint, DEFAULT_RTOL, DEFAULT_ATOL)
    if where is None:
        return
    message = (
        "φ file's base-model fingerprint does not match this model's self-attention weights "
        "(file made for a different Wan checkpoint)"
    )
    if where < 0:
        message += f": the file's has {len(phi.fingerprint)} values, this model's {len(fingerprint)}"
    else:
        block, role = divmod(where, len(FINGERPRINT_ROLES))
        message += f"; first difference at block {block}, self-attention {FINGERPRINT_ROLES[role]}.weight"
    raise ValueError(message)


# ------------------------------------------------------------------------------------------------
# file names from node inputs
# ------------------------------------------------------------------------------------------------


def resolve_in_folder(folder: str | os.PathLike[str], name: str, *, must_exist: bool = True) -> Path:
    """The real path of the ``.safetensors`` file ``name`` inside ``folder``, refusing escapes.

    ``name`` may contain sub-folders (``/`` or ``\\``) but must be relative, contain no ``..``
    component and, after resolving symlinks, stay inside ``folder`` (itself resolved).

    Raises:
        ValueError: for an empty / absolute / escaping name, a non-``.safetensors`` name, or a
            name that resolves to a directory.
        FileNotFoundError: if ``must_exist`` and the file does not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"φ file name must be a non-empty string; got {name!r}")
    if "\x00" in name:
        raise ValueError(f"φ file name {name!r} contains a NUL character")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise ValueError(f"φ file name {name!r} must be relative to the folder {folder}, not absolute")
    if ".." in PureWindowsPath(name).parts or ".." in PurePosixPath(name).parts:
        raise ValueError(f"φ file name {name!r} must not contain '..'")
    if not name.lower().endswith(".safetensors"):
        raise ValueError(f"φ file name {name!r} must end in .safetensors (only safetensors files are read)")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"φ file name {name!r} resolves to {target}, outside the folder {root}")
    if target.is_dir():
        raise ValueError(f"φ file name {name!r} is a directory")
    if must_exist and not target.is_file():
        raise FileNotFoundError(f"no φ file {name!r} in {root}")
    return target
