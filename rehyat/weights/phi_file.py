"""The φ file format: save and load the learned feature maps of converted blocks (safetensors only).

A φ file holds the φq / φk parameters of every converted block of one Wan2.1 model, plus string
metadata that says what they belong to:

* ``format`` = ``"rehyat-phi"`` and ``format_version`` = ``"1"``;
* ``conversion_config``: :meth:`ConversionConfig.to_dict` as JSON (φ shape, chunking, blocks);
* ``block_indices``: JSON list of the converted block indices;
* ``base_model``: :meth:`BaseModelInfo.to_dict` as JSON (dim, heads, layers);
* ``base_fingerprint``: JSON list of floats, see :func:`rehyat.weights.self_attention_fingerprint`;
* ``rehyat_version``: the package version that wrote the file;
* ``training`` (optional): a JSON object saying how the φ were made (stage, steps, data, …), as
  passed by the distillation / fine-tune code; absent in files written without it.

Tensors are named ``blocks.{i}.phi_q.weight1`` … ``blocks.{i}.phi_k.bias2`` and stored contiguous in
fp32. Files are only ever read with ``safetensors`` (never ``torch.load`` / pickle), and written
atomically (see :mod:`rehyat.atomic`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import Tensor

from ..atomic import atomic_save_file
from ..config import ConversionConfig
from ..finite import require_finite
from ..hybrid import HybridAttention
from .base_model import BaseModelInfo
from .fingerprint import check_fingerprint_values
from .phi_tensors import (
    PHI_MAPS,
    PHI_PARAMS,
    _describe_keys,
    _split_key,
    check_phi_shapes,
    collect_phi_tensors,
    phi_key,
)

FORMAT = "rehyat-phi"
"""Value of the ``format`` metadata field of every φ file."""

FORMAT_VERSION = 1
"""The φ file format version this module writes, and the newest it reads."""

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
        training: how the φ were made (the ``training`` metadata object), None when not recorded.
        rehyat_version: the ComfyUI-ReHyAt version that wrote the file ("unknown" if not recorded).
    """

    config: ConversionConfig
    blocks: tuple[int, ...]
    base: BaseModelInfo
    fingerprint: list[float]
    tensors: dict[str, Tensor]
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] | None = None
    rehyat_version: str = "unknown"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _training_json(training: Any) -> str:
    """``training`` as compact JSON; refuses non-mappings, non-string keys and non-JSON values."""
    if not isinstance(training, Mapping):
        raise ValueError(f"training must be a mapping (or None); got {type(training).__name__}")
    bad_keys = [key for key in training if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"training keys must be strings; got {bad_keys!r}")
    try:
        return _json(dict(training))
    except RecursionError:
        raise ValueError("training metadata is nested too deeply to store as JSON") from None
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"training metadata must be JSON-serialisable (finite numbers, strings, bools, None, lists, "
            f"mappings): {err}"
        ) from None


def _check_training_conversion(
    training: Mapping[str, Any] | None, config: ConversionConfig, where: str
) -> None:
    """Refuse a ``training`` record whose ``conversion`` (Tc, To, causal) contradicts ``config``."""
    record = training.get("conversion") if isinstance(training, Mapping) else None
    if not isinstance(record, Mapping):
        return
    attention = record.get("attention", record)
    if not isinstance(attention, Mapping):
        return
    for field in ("chunk_frames", "overlap_frames", "causal"):
        if field in attention and attention[field] != getattr(config.attention, field):
            raise ValueError(
                f"{where}: training.conversion records {field}={attention[field]!r} but the φ's "
                f"conversion_config has {field}={getattr(config.attention, field)!r} — the metadata "
                "contradicts itself; which one the φ were trained with is unknown"
            )


def save_phi_weights(
    path: str | os.PathLike[str],
    hybrid: Mapping[int, HybridAttention],
    config: ConversionConfig,
    base: BaseModelInfo,
    fingerprint: list[float],
    training: Mapping[str, Any] | None = None,
    *,
    replace: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the φ of ``hybrid`` with their metadata to ``path`` atomically.

    Args:
        path: destination file (its directory must exist); an existing file is replaced only
            once the new one is complete — or, with ``replace=False``, never (``FileExistsError``).
        hybrid: converted block index -> its :class:`HybridAttention`.
        config: the conversion config; its resolved blocks must be exactly ``hybrid``'s keys and
            its attention config must be every module's config.
        base: the base model (its heads/head_dim must match the modules).
        fingerprint: the base model's :func:`self_attention_fingerprint`.
        training: optional description of how the φ were made (e.g. ``{"stage": "distill",
            "steps": 2000, "prompts": 500, "teacher": "Wan2.1-T2V-1.3B"}``): a mapping with string
            keys whose values are JSON-serialisable (finite numbers, strings, bools, None, lists,
            mappings); stored as JSON, read back as :attr:`PhiWeights.training`.
        replace: False: publish a new file only (see :func:`rehyat.atomic.atomic_write`).
        dtype: storage dtype (float32, float16 or bfloat16); loading always gives fp32 φ.
            Half precision halves the file; a value it cannot hold (overflow) is refused.

    Returns:
        The path written.
    """
    path = Path(path)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16; got {dtype!r}")
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
    fingerprint = check_fingerprint_values(fingerprint, base, "fingerprint")
    training_json = None if training is None else _training_json(training)
    _check_training_conversion(training, config, "training metadata")
    tensors = collect_phi_tensors(hybrid)
    require_finite(tensors, f"φ to save to {path}")
    if dtype != torch.float32:
        tensors = {key: value.to(dtype) for key, value in tensors.items()}
        require_finite(tensors, f"φ to save to {path} in {dtype} (a value overflows it)")

    from .. import __version__  # late import: the package may import this module

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "conversion_config": _json(config.to_dict()),
        "block_indices": _json(list(blocks)),
        "base_model": _json(base.to_dict()),
        "base_fingerprint": _json(fingerprint),
        "rehyat_version": str(__version__),
    }
    if training_json is not None:
        metadata["training"] = training_json
    atomic_save_file(tensors, metadata, path, replace=replace)
    return path


def _metadata_json(metadata: Mapping[str, str], name: str, path: Path) -> Any:
    if name not in metadata:
        raise ValueError(f"φ file {path} has no {name!r} metadata field (damaged or hand-made file?)")
    try:
        return json.loads(metadata[name])
    except json.JSONDecodeError as err:
        raise ValueError(f"φ file {path}: metadata field {name!r} is not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"φ file {path}: metadata field {name!r} is nested too deeply (damaged?)") from None


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
    fingerprint = check_fingerprint_values(
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
    check_phi_shapes(tensors, blocks, config.attention.feature_map, base, "the file's own metadata")
    require_finite(tensors, f"φ file {path}")
    training = None
    if "training" in metadata:
        training = _metadata_json(metadata, "training", path)
        if not isinstance(training, dict):
            raise ValueError(f"φ file {path}: training metadata must be a JSON object; got {training!r}")
        _check_training_conversion(training, config, f"φ file {path}")
    return PhiWeights(config, blocks, base, fingerprint, tensors, version, training,
                      metadata.get("rehyat_version", "unknown"))


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


