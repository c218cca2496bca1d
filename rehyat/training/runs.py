"""Run folders: named training runs with atomic, resumable checkpoints (safetensors + JSON only).

A run lives in ``<root>/<name>/``:

* ``run.json`` — the run's *identity* (model + config description, JSON). Opening the folder with a
  different identity is refused, so two models or configs are never mixed in one run.
* ``checkpoints/checkpoint-<step>.safetensors`` — one file per checkpoint: the trained tensors
  (``tensors/…``), the optimizer state's tensors (``optimizer/…``), the RNG states (``rng/…``) and, in
  the safetensors metadata, the JSON skeleton of the optimizer state, the caller's ``extra`` counters
  and the Python / numpy RNG states. Written to a temporary sibling, fsynced, then renamed, so a
  kill at any moment leaves either the previous or the new checkpoint — never a torn one. Only the
  newest ``keep_last`` checkpoints are kept.
* anything else the trainer writes with :meth:`RunFolder.write_json` / :meth:`RunFolder.write_bytes`
  (atomic as well), e.g. a report or a loss-curve PNG.

Nothing is ever unpickled: optimizer states are stored as tensors plus a JSON skeleton.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ..atomic import atomic_save_file, atomic_write_bytes
from ..config import require_int

IDENTITY_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "rehyat-run-checkpoint"
CHECKPOINT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8,})\.safetensors$")
_TENSOR_TAG = "__tensor__"
_DICT_TAG = "__dict__"
_TUPLE_TAG = "__tuple__"


def validate_run_name(name: Any, parameter: str = "run_name") -> str:
    """Return ``name`` if it is a plain folder name; raise a ValueError naming ``parameter`` otherwise.

    Refused: empty names, path separators (``/`` or ``\\``), ``.`` / ``..``, NUL, a leading dot
    (hidden folders), drive letters and names longer than 128 characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{parameter} must be a non-empty folder name; got {name!r}")
    if "/" in name or "\\" in name:
        raise ValueError(
            f"{parameter} {name!r} must be a plain folder name without path separators ('/' or '\\')"
        )
    if name in (".", "..") or ".." in name:
        raise ValueError(f"{parameter} {name!r} must not contain '..'")
    if "\x00" in name or name.startswith(".") or PureWindowsPath(name).drive or len(name) > 128:
        raise ValueError(
            f"{parameter} {name!r} must be a visible folder name of at most 128 characters "
            "(no leading '.', no NUL, no drive letter)"
        )
    if PurePosixPath(name).name != name or name != name.strip():
        raise ValueError(f"{parameter} {name!r} must not start or end with spaces")
    return name


@dataclass
class Checkpoint:
    """One saved training state, as returned by :meth:`RunFolder.load_latest`.

    Attributes:
        step: the step counter saved with it.
        tensors: the trained tensors (CPU), by name.
        optimizer_state: the optimizer state as passed to ``save_checkpoint`` (tensors on the CPU).
        extra: the caller's JSON counters and settings.
        rng: RNG states captured at save time (see :meth:`restore_rng`).
        path: the checkpoint file.
    """

    step: int
    tensors: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    extra: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def restore_rng(self) -> None:
        """Put the saved torch CPU/CUDA, Python ``random`` and numpy RNG states back."""
        restore_rng_states(self.rng)


class RunFolder:
    """A named run folder under ``root`` bound to one identity.

    Args:
        root: the directory holding run folders (created if missing).
        name: the run's folder name (see :func:`validate_run_name`; errors name ``run_name``).
        identity: JSON-serialisable description of the model and config; a folder already written
            for a different identity is refused with a message listing the differing keys.
        keep_last: how many checkpoints to keep (≥ 1).
        create: create the folder and write ``run.json`` when absent (rank 0); when False the
            folder must already exist (other ranks, after a barrier).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        identity: Mapping[str, Any],
        *,
        keep_last: int = 2,
        create: bool = True,
    ):
        validate_run_name(name)
        require_int("keep_last", keep_last, low=1)
        self.root = Path(root)
        self.name = name
        self.path = self.root / name
        self.keep_last = keep_last
        self.identity = _canonical(identity, "identity")
        stored_file = self.path / IDENTITY_FILE
        if stored_file.is_file():
            stored = json.loads(stored_file.read_text(encoding="utf-8"))
            if stored != self.identity:
                raise ValueError(
                    f"run folder {self.path} was written for another model or config "
                    f"(differs in: {', '.join(_differing_keys(stored, self.identity))}); "
                    "choose another run name, or delete that folder to start over"
                )
        elif create:
            if self.path.exists() and any(self.path.iterdir()):
                raise ValueError(
                    f"run folder {self.path} exists but has no {IDENTITY_FILE}: it is not a ReHyAt run "
                    "folder; choose another run name"
                )
            (self.path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            self.write_json(IDENTITY_FILE, self.identity)
        else:
            raise FileNotFoundError(f"run folder {self.path} has no {IDENTITY_FILE} (not created yet?)")
        (self.path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        if create:  # temporary files of a process killed mid-write (no one else writes now)
            for stale in (self.path / CHECKPOINT_DIR).glob(".checkpoint-*.tmp"):
                stale.unlink(missing_ok=True)

    # -------------------------------------------------------------------------------- checkpoints

    def checkpoint_paths(self) -> list[Path]:
        """Complete checkpoint files, oldest first (temporary files are ignored)."""
        folder = self.path / CHECKPOINT_DIR
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def save_checkpoint(
        self,
        step: int,
        tensors: Mapping[str, Tensor],
        optimizer_state: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
        *,
        rng: bool = True,
    ) -> Path:
        """Write checkpoint ``step`` atomically and drop all but the newest ``keep_last``.

        Args:
            step: the step counter (≥ 0); names the file.
            tensors: trained tensors by name (saved contiguous, on the CPU, in their dtype).
            optimizer_state: e.g. ``optimizer.state_dict()`` or a dict of several; nested dicts,
                lists, tuples, numbers, strings and tensors are allowed.
            extra: JSON-serialisable counters (trajectories done, loss history, …).
            rng: also save this process's torch CPU/CUDA, ``random`` and numpy RNG states.

        Returns:
            The checkpoint file.
        """
        require_int("step", step, low=0)
        flat: dict[str, Tensor] = {}
        for key, value in tensors.items():
            if not isinstance(value, Tensor):
                raise ValueError(f"tensors[{key!r}] must be a torch.Tensor; got {type(value).__name__}")
            flat[f"tensors/{key}"] = _cpu(value)
        skeleton = _flatten(dict(optimizer_state), "optimizer", flat)
        rng_json: dict[str, Any] = {}
        if rng:
            rng_json = capture_rng_states(flat)
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "format_version": str(CHECKPOINT_VERSION),
            "step": str(step),
            "optimizer": json.dumps(skeleton),
            "extra": json.dumps(_canonical(dict(extra or {}), "extra")),
            "rng": json.dumps(rng_json),
        }
        path = self.path / CHECKPOINT_DIR / f"checkpoint-{step:08d}.safetensors"
        try:
            atomic_save_file(flat, metadata, path)
        except (OSError, safetensors.SafetensorError) as err:  # disk full, read-only, quota, …
            kept = [p for p in self.checkpoint_paths() if p != path]
            intact = f"the last checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists"
            reason = f"{err.strerror} [errno {err.errno}]" if getattr(err, "strerror", None) else str(err)
            raise OSError(
                getattr(err, "errno", None) or 5,
                f"checkpoint {step} was not written to {path.parent} ({reason}); {intact} — free space or "
                "make the folder writable, then run the same command again to resume from it",
            ) from None
        for old in self.checkpoint_paths()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> Checkpoint | None:
        """The newest intact checkpoint, or None when the run has none yet.

        An unreadable checkpoint (truncated or damaged by a disk error …) is skipped with a warning
        that names it, and the newest older one that reads is used. When none reads, a ValueError
        names every file and what to do.
        """
        skipped: list[str] = []
        for path in reversed(self.checkpoint_paths()):
            try:
                checkpoint = load_checkpoint(path)
            except (OSError, ValueError) as err:
                skipped.append(f"{path} ({err})")
                continue
            if skipped:
                warnings.warn(
                    f"skipped unreadable checkpoint(s) {'; '.join(skipped)}; resuming from {path.name} "
                    f"(step {checkpoint.step}) instead",
                    stacklevel=2,
                )
            return checkpoint
        if skipped:
            raise ValueError(
                f"run folder {self.path}: no checkpoint is readable: {'; '.join(skipped)} — move them "
                "out of its checkpoints folder to start over, or choose another run name"
            )
        return None

    # ------------------------------------------------------------------------------- other files

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to ``<run>/<name>`` atomically."""
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` to ``<run>/<name>`` atomically (``name`` is a plain file name)."""
        validate_run_name(name, "file name")
        path = self.path / name
        atomic_write_bytes(path, data)
        return path


def tensors_digest(tensors: Sequence[Tensor]) -> str:
    """A short SHA-256 of tensors' shapes and fp32 values, for run identities (e.g. the prompts used)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read one checkpoint file written by :meth:`RunFolder.save_checkpoint` (safetensors only).

    Raises:
        ValueError: naming the file, for a file that is damaged or not a ReHyAt run checkpoint.
    """
    path = Path(path)
    try:
        return _read_checkpoint(path)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from None
    except (KeyError, TypeError, IndexError, safetensors.SafetensorError) as err:
        raise ValueError(f"checkpoint {path} is damaged: {type(err).__name__}: {err}") from None


def _read_checkpoint(path: Path) -> Checkpoint:
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a ReHyAt run checkpoint")
        if int(metadata.get("format_version", "0")) > CHECKPOINT_VERSION:
            raise ValueError(f"{path} was written by a newer ReHyAt (format {metadata['format_version']})")
        flat = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors = {key[len("tensors/") :]: value for key, value in flat.items() if key.startswith("tensors/")}
    optimizer_state = _unflatten(json.loads(metadata["optimizer"]), flat)
    rng = json.loads(metadata.get("rng", "{}"))
    rng["_tensors"] = {key: value for key, value in flat.items() if key.startswith("rng/")}
    return Checkpoint(
        step=int(metadata["step"]),
        tensors=tensors,
        optimizer_state=optimizer_state,
        extra=json.loads(metadata["extra"]),
        rng=rng,
        path=path,
    )


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------


def capture_rng_states(tensors_out: dict[str, Tensor]) -> dict[str, Any]:
    """Add this process's RNG tensors to ``tensors_out`` (``rng/…``); return the JSON part."""
    tensors_out["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors_out[f"rng/torch_cuda_{index}"] = state
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the core
        return out
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors_out["rng/numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    out["numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
    return out


def restore_rng_states(rng: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (given ``Checkpoint.rng``)."""
    tensors = rng.get("_tensors", {})
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng/torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng and "rng/numpy_keys" in tensors:
        import numpy as np

        kind, pos, has_gauss, cached = rng["numpy"]
        keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------------
# nested state <-> tensors + JSON skeleton
# ------------------------------------------------------------------------------------------------


def _cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def _flatten(value: Any, prefix: str, out: dict[str, Tensor]) -> Any:
    """JSON skeleton of ``value``; its tensors go to ``out`` under ``prefix/…`` keys."""
    if isinstance(value, Tensor):
        out[prefix] = _cpu(value)
        return {_TENSOR_TAG: prefix}
    if isinstance(value, Mapping):
        return {_DICT_TAG: [[key, _flatten(item, f"{prefix}/{key}", out)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_flatten(item, f"{prefix}/{i}", out) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(item, f"{prefix}/{i}", out) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot checkpoint {prefix}: unsupported type {type(value).__name__}")


def _unflatten(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if _TENSOR_TAG in skeleton:
            return tensors[skeleton[_TENSOR_TAG]]
        if _DICT_TAG in skeleton:
            return {key: _unflatten(item, tensors) for key, item in skeleton[_DICT_TAG]}
        if _TUPLE_TAG in skeleton:
            return tuple(_unflatten(item, tensors) for item in skeleton[_TUPLE_TAG])
    if isinstance(skeleton, list):
        return [_unflatten(item, tensors) for item in skeleton]
    return skeleton


def _canonical(value: Any, what: str) -> Any:
    """``value`` round-tripped through JSON (tuples become lists); raises for non-JSON values."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable: {err}") from None


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in sorted(set(a) | set(b)):
            keys += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return keys
    return [] if a == b else [prefix.rstrip(".") or "(whole identity)"]
