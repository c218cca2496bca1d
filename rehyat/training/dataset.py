"""Fine-tuning data: a folder of (video latent, text conditioning) samples with a manifest.

Layout of a dataset folder::

    manifest.json                 {"format": "rehyat-finetune-dataset", "format_version": 1,
                                   "latent_shape": [C, T, H, W], "context_dim": D,
                                   "model": {...}, "samples": [{"file": ..., "source": ..., ...}]}
    sample-000000.safetensors     tensors "latent" (C, T, H, W) and "context" (L, D)

Every sample of a folder has the same latent shape and context width (one batch = one shape);
``model`` describes the model the latents are for (e.g. {"name": ..., "in_dim": 16}); each
sample's entry says how it was made ({"source": "teacher", "prompt": ..., "seed": ..., "steps":
...} or {"source": "video", ...}). Appending a mismatched sample, or loading a folder whose files
disagree with the manifest, raises a ValueError that says what differs. Writes are atomic.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import Tensor

from ..atomic import atomic_save_file, atomic_write_bytes, create_numbered
from ..finite import require_finite

FORMAT = "rehyat-finetune-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SAMPLE = "sample-{:06d}.safetensors"


@dataclass(frozen=True)
class Sample:
    """One training pair: ``latent`` (C, T, H, W) and ``context`` (L, D), both on the CPU."""

    latent: Tensor
    context: Tensor


class LatentDataset:
    """A dataset folder (see the module doc); creates it on the first :meth:`append`.

    Args:
        folder: the dataset folder.
        model: description of the model the latents belong to (JSON-serialisable); stored on
            creation and compared on every append (None: accept the stored one).
    """

    def __init__(self, folder: str | os.PathLike[str], model: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        self.model = dict(model) if model is not None else None
        self.manifest: dict[str, Any] | None = None
        path = self.folder / MANIFEST
        if path.is_file():
            self.manifest = _read_manifest(path)
            stored = self.manifest["model"]
            if self.model is not None and _canonical(stored) != _canonical(self.model):
                raise ValueError(
                    f"dataset {self.folder} was made for model {stored}, not {self.model}: use another folder"
                )
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise ValueError(
                f"dataset folder {self.folder} exists but has no {MANIFEST}: use an empty folder"
            )

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> LatentDataset:
        """An existing dataset (FileNotFoundError when the folder has no manifest)."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a ReHyAt fine-tuning dataset (no {MANIFEST})")
        return cls(folder)

    def __len__(self) -> int:
        return 0 if self.manifest is None else len(self.manifest["samples"])

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """(C, T, H, W) shared by every sample (None while empty)."""
        return None if self.manifest is None else tuple(self.manifest["latent_shape"])

    @property
    def context_dim(self) -> int | None:
        """Width D of every sample's context (None while empty)."""
        return None if self.manifest is None else int(self.manifest["context_dim"])

    @property
    def context_length(self) -> int:
        """Tokens of the longest context in the dataset (every batch is padded to it)."""
        if self.manifest is None or not self.manifest["samples"]:
            raise ValueError(f"dataset {self.folder} is empty")
        return max(int(e["context_tokens"]) for e in self.manifest["samples"])

    def entries(self) -> list[dict[str, Any]]:
        """How each sample was made (copies of the manifest entries)."""
        return [] if self.manifest is None else [dict(e) for e in self.manifest["samples"]]

    def append(self, latent: Tensor, context: Tensor, info: Mapping[str, Any]) -> Path:
        """Add one sample: ``latent`` (C, T, H, W) (or (1, C, T, H, W)), ``context`` (L, D) (or (1, L, D)).

        Args:
            info: how it was made (JSON-serialisable; e.g. {"source": "teacher", "seed": 3}).

        Raises:
            ValueError: a shape that differs from the folder's samples, or non-finite values.
        """
        latent, context = _squeeze_batch(latent, 5, "latent"), _squeeze_batch(context, 3, "context")
        if latent.ndim != 4:
            raise ValueError(f"latent must be (C, T, H, W); got shape {tuple(latent.shape)}")
        if context.ndim != 2:
            raise ValueError(f"context must be (L, D) text features; got shape {tuple(context.shape)}")
        for name, tensor in (("latent", latent), ("context", context)):
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} has non-finite values: refusing the sample")
        if self.manifest is None:
            if self.model is None:
                raise ValueError(
                    "a new dataset needs a model description: LatentDataset(folder, model={...})"
                )
            self.manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "latent_shape": list(latent.shape),
                "context_dim": int(context.shape[1]),
                "model": self.model,
                "samples": [],
            }
        _check_shapes(self.manifest, tuple(latent.shape), int(context.shape[1]), "new sample")
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "latent": latent.detach().cpu().contiguous(),
            "context": context.detach().cpu().contiguous(),
        }
        name = create_numbered(  # a new file: never over a sample left by an interrupted append
            lambda number: self.folder / _SAMPLE.format(number),
            lambda path: atomic_save_file(tensors, {"format": FORMAT + "-sample"}, path, replace=False),
            first=len(self.manifest["samples"]),
        ).name
        entry = {**_canonical(dict(info)), "file": name, "context_tokens": int(context.shape[0])}
        manifest = {**self.manifest, "samples": [*self.manifest["samples"], entry]}
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_bytes(self.folder / MANIFEST, text.encode("utf-8"))
        self.manifest = manifest
        return self.folder / name

    def load(self, index: int) -> Sample:
        """Sample ``index`` (its file is checked against the manifest)."""
        if self.manifest is None or not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range: the dataset has {len(self)} samples")
        path = self.folder / self.manifest["samples"][index]["file"]
        if not path.is_file() or path.parent != self.folder:
            raise ValueError(f"dataset {self.folder}: sample file {path.name} is missing")
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = set(handle.keys())
            if keys != {"latent", "context"}:
                raise ValueError(f"{path} must hold exactly 'latent' and 'context'; has {sorted(keys)}")
            latent, context = handle.get_tensor("latent"), handle.get_tensor("context")
        _check_sample_tensors(path, latent, context)
        _check_shapes(self.manifest, tuple(latent.shape), int(context.shape[-1]), f"sample file {path.name}")
        if context.ndim != 2 or context.shape[0] != self.manifest["samples"][index]["context_tokens"]:
            raise ValueError(
                f"sample file {path.name}: context shape {tuple(context.shape)} differs from "
                "the manifest's entry"
            )
        return Sample(latent=latent, context=context)

    def batch(
        self, indices: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Samples ``indices`` stacked: latents (B, C, T, H, W) and contexts (B, L, D).

        Contexts are zero-padded to the longest context of the whole dataset (:attr:`context_length`),
        so a sample's numbers never depend on which samples share its batch (Wan itself zero-pads
        the text to 512 tokens).
        """
        samples = [self.load(i) for i in indices]
        length = self.context_length
        latents = torch.stack([s.latent.to(dtype) for s in samples])
        contexts = torch.zeros(len(samples), length, samples[0].context.shape[1], dtype=dtype)
        for row, s in enumerate(samples):
            contexts[row, : s.context.shape[0]] = s.context.to(dtype)
        return latents.to(device), contexts.to(device)

    def identity(self) -> dict[str, Any]:
        """What a training run depends on: shapes, model and the sample files' list."""
        if self.manifest is None:
            raise ValueError(f"dataset {self.folder} is empty")
        return {
            "latent_shape": self.manifest["latent_shape"],
            "context_dim": self.manifest["context_dim"],
            "model": self.manifest["model"],
            "samples": [e["file"] for e in self.manifest["samples"]],
        }


def _check_sample_tensors(path: Path, latent: Tensor, context: Tensor) -> None:
    """A sample file's tensors: floating point, ``latent`` (C, T, H, W), ``context`` (L, D), finite."""
    for name, tensor, layout in (("latent", latent, "(C, T, H, W)"), ("context", context, "(L, D)")):
        if not tensor.is_floating_point():
            raise ValueError(f"sample file {path}: {name} must be floating point; got {tensor.dtype}")
        if tensor.ndim != len(layout.split(",")):
            raise ValueError(f"sample file {path}: {name} must be {layout}; got shape {tuple(tensor.shape)}")
    require_finite({"latent": latent, "context": context}, f"sample file {path}")


def _squeeze_batch(tensor: Tensor, batched_ndim: int, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor; got {type(tensor).__name__}")
    if tensor.ndim == batched_ndim:
        if tensor.shape[0] != 1:
            raise ValueError(f"{name} has batch size {tensor.shape[0]}: append one sample at a time")
        return tensor[0]
    return tensor


def _check_shapes(
    manifest: Mapping[str, Any], latent_shape: tuple[int, ...], context_dim: int, what: str
) -> None:
    want = tuple(manifest["latent_shape"])
    if latent_shape != want:
        raise ValueError(
            f"{what}: latent shape {list(latent_shape)} (C, T, H, W) differs from the dataset's "
            f"{list(want)}; "
            "every sample of a dataset must have the same size — make a separate dataset for this size"
        )
    if context_dim != manifest["context_dim"]:
        raise ValueError(
            f"{what}: context width {context_dim} differs from the dataset's {manifest['context_dim']} "
            "(a different text encoder?)"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ReHyAt fine-tuning dataset manifest (format {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest.get('format_version')}; this version reads "
            f"≤ {FORMAT_VERSION}: update ComfyUI-ReHyAt"
        )
    for key in ("latent_shape", "context_dim", "model", "samples"):
        if key not in manifest:
            raise ValueError(f"{path} lacks {key!r}")
    for entry in manifest["samples"]:
        name = entry.get("file", "") if isinstance(entry, dict) else ""
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"{path}: sample entry {entry!r} has no plain file name")
        if not isinstance(entry.get("context_tokens"), int):
            raise ValueError(f"{path}: sample entry {name!r} lacks its context_tokens count")
    return manifest


def _canonical(value: Any) -> Any:
    """JSON round trip (tuples → lists); refuses non-finite floats and non-JSON values."""

    def check(v: Any) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"non-finite number {v} in dataset metadata")

    for v in _walk(value):
        check(v)
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except TypeError as err:
        raise ValueError(f"dataset metadata must be JSON-serialisable: {err}") from None


def _walk(value: Any):
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value
