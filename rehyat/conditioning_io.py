"""Save and load a ComfyUI-style CONDITIONING to / from safetensors (no pickle, no ComfyUI import).

A conditioning is a list of entries ``(cond, extras)``: ``cond`` is the text encoder's output
``(B, L, C)`` and ``extras`` a dict of extra inputs (``pooled_output``, ``clip_vision_output``,
``concat_latent_image``, ``guidance``, ``start_percent`` …). Saving it once lets a long clip be
generated without keeping the 11 GB umT5 text encoder loaded, and lets tests run graphs without it.

File layout (``format`` = ``"rehyat-conditioning"``, ``format_version`` = ``"1"``):

* tensors ``t0``, ``t1``, … — every tensor of the conditioning, stored once even when it is shared
  (same tensor object) between entries or keys, with its dtype kept (fp32 / bf16 / fp16 …);
* metadata ``structure``: JSON list with one ``{"cond": "t0", "extras": {key: node}}`` per entry,
  where a node is ``{"tensor": name}``, ``{"value": json}`` (None, bool, int, finite float, str),
  ``{"list": [nodes], "tuple": bool}``, ``{"dict": {str: node}}`` or
  ``{"object": class_name, "attrs": {str: node}}`` for the objects in :data:`OBJECT_CLASSES`.

An extra that cannot be stored this way (a ControlNet, hooks, a model, a non-finite float …) is
refused with a message naming the entry and the key, never dropped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
from torch import Tensor, nn

from .atomic import atomic_save_file
from .finite import require_finite

FORMAT = "rehyat-conditioning"
"""Value of the ``format`` metadata field of a conditioning file."""

FORMAT_VERSION = 1
"""The conditioning file format version written, and the newest read."""

OBJECT_CLASSES: frozenset[str] = frozenset({"comfy.clip_vision.Output"})
"""Objects (by ``module.qualname``) stored attribute by attribute: ComfyUI's CLIP-vision output."""


class ConditioningObject:
    """A loaded object of :data:`OBJECT_CLASSES`: attributes readable as ``obj.x`` and ``obj["x"]``.

    ComfyUI's own ``comfy.clip_vision.Output`` behaves the same way; the ComfyUI node turns this
    back into that class.
    """

    def __init__(self, class_name: str, attrs: Mapping[str, Any]):
        self.__dict__["_class_name"] = class_name
        self.__dict__.update(attrs)

    @property
    def class_name(self) -> str:
        """``module.qualname`` of the object that was saved."""
        return self.__dict__["_class_name"]

    def attributes(self) -> dict[str, Any]:
        """The saved attributes."""
        return {k: v for k, v in self.__dict__.items() if k != "_class_name"}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __repr__(self) -> str:
        return f"ConditioningObject({self.class_name!r}, {sorted(self.attributes())})"


def save_conditioning(path: str | os.PathLike[str], conditioning: Any, *, replace: bool = True) -> Path:
    """Write ``conditioning`` (list of ``(cond (B, L, C), extras dict)``) to ``path`` atomically.

    ``replace=False`` publishes a new file only (``FileExistsError`` if ``path`` exists).

    Raises:
        ValueError: for a malformed conditioning or an extra that cannot be round-tripped (the
            message names the entry, the key and what to do).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"conditioning file name must end in .safetensors; got {path.name!r}")
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(
            "conditioning must be a non-empty list of [cond tensor, extras dict] entries; "
            f"got {type(conditioning).__name__}"
            + (" (empty)" if isinstance(conditioning, (list, tuple)) else "")
        )
    encoder = _Encoder()
    structure = []
    for index, entry in enumerate(conditioning):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"conditioning entry {index} must be a [cond tensor, extras dict] pair")
        cond, extras = entry
        if not isinstance(cond, Tensor) or cond.ndim != 3:
            shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"conditioning entry {index}: cond must be a tensor (B, L, C); got {shape}")
        if not isinstance(extras, Mapping):
            raise ValueError(
                f"conditioning entry {index}: extras must be a dict; got {type(extras).__name__}"
            )
        encoded = {}
        for key, value in extras.items():
            if not isinstance(key, str):
                raise ValueError(f"conditioning entry {index}: extra keys must be strings; got {key!r}")
            where = f"conditioning entry {index}, extra {key!r}"
            try:
                encoded[key] = encoder.encode(value, where)
            except RecursionError:
                raise ValueError(f"{where} is nested too deeply to be saved") from None
        structure.append({"cond": encoder.tensor(cond, f"conditioning entry {index}, cond"),
                          "extras": encoded})

    from . import __version__  # late import: the package may import this module

    try:
        structure_json = json.dumps(structure, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("conditioning: its extras are nested too deeply to be saved") from None
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "structure": structure_json,
        "rehyat_version": str(__version__),
    }
    return atomic_save_file(encoder.tensors, metadata, path, replace=replace)


def load_conditioning(path: str | os.PathLike[str]) -> list[tuple[Tensor, dict]]:
    """Read a file written by :func:`save_conditioning` (safetensors only, tensors on the CPU).

    Objects of :data:`OBJECT_CLASSES` come back as :class:`ConditioningObject`.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for a file that is not a readable ReHyAt conditioning file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conditioning file {path} does not exist (or is not a file)")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            _check_format(metadata, path)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        structure = json.loads(metadata.get("structure", ""))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"conditioning file {path}: 'structure' metadata is not valid JSON ({err})"
        ) from None
    except RecursionError:
        raise ValueError(f"conditioning file {path}: 'structure' metadata is nested too deeply") from None
    if not isinstance(structure, list) or not structure:
        raise ValueError(f"conditioning file {path}: 'structure' must be a non-empty list of entries")
    decoder = _Decoder(tensors, path)
    result = []
    for index, entry in enumerate(structure):
        malformed = not isinstance(entry, dict) or set(entry) != {"cond", "extras"}
        if malformed or not isinstance(entry["extras"], dict):
            raise ValueError(f"conditioning file {path}: entry {index} is malformed")
        where = f"entry {index}"
        try:
            cond = decoder.decode({"tensor": entry["cond"]}, f"{where}, cond")
            extras = {
                key: decoder.decode(node, f"{where}, extra {key!r}") for key, node in entry["extras"].items()
            }
        except RecursionError:
            raise ValueError(f"conditioning file {path}: {where} is nested too deeply") from None
        if not cond.is_floating_point():
            raise ValueError(
                f"conditioning file {path}: {where}, cond must be a floating-point tensor; got {cond.dtype}"
            )
        if cond.ndim != 3:
            raise ValueError(
                f"conditioning file {path}: {where}, cond must be (B, L, C) text features; "
                f"got shape {tuple(cond.shape)}"
            )
        result.append((cond, extras))
    return result


def _check_format(metadata: Mapping[str, str], path: Path) -> None:
    if metadata.get("format") != FORMAT:
        found = f"format={metadata['format']!r}" if "format" in metadata else "no 'format' metadata"
        raise ValueError(
            f"{path} is not a ReHyAt conditioning file ({found}; expected {FORMAT!r})"
        )
    raw = metadata.get("format_version", "")
    if not raw.isdigit() or not 1 <= int(raw) <= FORMAT_VERSION:
        raise ValueError(
            f"conditioning file {path} has format_version {raw!r}; this version reads 1..{FORMAT_VERSION}"
            " (update ComfyUI-ReHyAt if the file is newer)"
        )


def _class_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    """Turns extras into JSON nodes, collecting tensors (each tensor object stored once)."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._names: dict[int, str] = {}

    def tensor(self, value: Tensor, where: str) -> str:
        if type(value) not in (Tensor, nn.Parameter) or value.is_sparse or value.is_quantized:
            raise ValueError(f"{where}: a {type(value).__name__} with layout {value.layout} cannot be saved")
        if id(value) not in self._names:
            name = f"t{len(self.tensors)}"
            self.tensors[name] = value.detach().to("cpu").contiguous()
            self._names[id(value)] = name
        return self._names[id(value)]

    def encode(self, value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, Tensor):
            return {"tensor": self.tensor(value, where)}
        if value is None or isinstance(value, (bool, int, str)):
            return {"value": value}
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where}: non-finite number {value!r} cannot be saved")
            return {"value": value}
        if isinstance(value, (list, tuple)):
            return {"list": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)],
                    "tuple": isinstance(value, tuple)}
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ValueError(f"{where}: dict keys must be strings to be saved; got {bad!r}")
            return {"dict": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
        name = _class_name(value)
        if isinstance(value, ConditioningObject):
            name, attrs = value.class_name, value.attributes()
        elif name in OBJECT_CLASSES:
            attrs = dict(vars(value))
        else:
            raise ValueError(
                f"{where} is a {name}, which cannot be saved to a conditioning file (only tensors, "
                f"numbers, strings, None, lists, dicts and {sorted(OBJECT_CLASSES)}): save the "
                "conditioning before the node that adds it, and add it again after loading"
            )
        return {"object": name, "attrs": {k: self.encode(v, f"{where}.{k}") for k, v in attrs.items()}}


class _Decoder:
    """Turns JSON nodes back into values; every tensor is checked finite (named by where it sits)."""

    def __init__(self, tensors: Mapping[str, Tensor], path: Path):
        self.tensors, self.path = tensors, path

    def _malformed(self, node: Any, where: str) -> ValueError:
        text = repr(node)
        return ValueError(
            f"conditioning file {self.path}: {where}: malformed structure node "
            f"{text[:80] + '…' if len(text) > 80 else text}"
        )

    def decode(self, node: Any, where: str) -> Any:
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise self._malformed(node, where)
        keys = set(node)
        if keys == {"tensor"} and isinstance(node["tensor"], str):
            name = node["tensor"]
            if name not in self.tensors:
                raise ValueError(f"conditioning file {self.path}: tensor {name!r} is missing")
            tensor = self.tensors[name]
            require_finite({name: tensor}, f"conditioning file {self.path}: {where}")
            return tensor
        if keys == {"value"}:
            return node["value"]
        if keys <= {"list", "tuple"} and isinstance(node.get("list"), list):
            if not isinstance(node.get("tuple", False), bool):
                raise self._malformed(node, where)
            items = [self.decode(item, f"{where}[{i}]") for i, item in enumerate(node["list"])]
            return tuple(items) if node.get("tuple") else items
        if keys == {"dict"} and isinstance(node["dict"], dict):
            return {key: self.decode(item, f"{where}[{key!r}]") for key, item in node["dict"].items()}
        if keys == {"object", "attrs"} and isinstance(node["attrs"], dict):
            if node["object"] not in OBJECT_CLASSES:
                raise ValueError(f"conditioning file {self.path}: unknown object class {node['object']!r}")
            attrs = {k: self.decode(v, f"{where}.{k}") for k, v in node["attrs"].items()}
            return ConditioningObject(node["object"], attrs)
        raise self._malformed(node, where)
