"""A streaming run's resume file: everything needed to extend a finished clip later, exactly.

After the last chunk of a streaming run, every model evaluation of the sampler left per-block
recurrent states (linear state S, z and the overlap frames' K/V) for the chunk that would come
next. A resume file holds them — keyed like the :class:`~rehyat.streaming.store.StateStore`
(evaluation, conditioning, batch item) — together with the settings the continuation must reuse
(:class:`ResumeSettings`: sampler, scheduler, steps, cfg, denoise, seed, sigmas, the sigma of every
evaluation, Tc / To, the model's fingerprint and the φ identity) and a digest of the clip's latent,
so that a continuation on anything else is refused by name.

Size: one state per (evaluation, conditioning, batch item, block) — exactly
:func:`~rehyat.streaming.store.state_store_bytes` of the run, plus a small header
(:func:`resume_file_bytes`). Files are safetensors (no pickles), written atomically as new files;
NaN / inf never load or save. Pure PyTorch: never imports ComfyUI.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors
import torch
from torch import Tensor

from ..atomic import atomic_save_file
from ..config import require_int
from ..finite import require_finite
from ..ops import RecurrentState
from .store import StateKey, StateStore

FORMAT = "rehyat_resume"
VERSION = 1
NOISE_SEMANTICS = "per_frame"
"""How the clip's starting noise was drawn: latent frame f from (seed, f) alone
(:func:`~rehyat.streaming.noise.initial_frame_noise`), so any length continues the same noise."""
_PARTS = ("kv", "k_sum", "k_overlap", "v_overlap")
_HEADER_BYTES = 64 * 1024  # generous bound for the JSON header and the safetensors index


@dataclass(frozen=True)
class ResumeSettings:
    """What a continuation must reuse (each compared by name when a clip is extended).

    Attributes:
        sampler_name, scheduler, steps, cfg, denoise, seed: the sampling settings of the run.
        sigmas: the schedule every chunk ran.
        evaluation_sigmas: the sigma of each model evaluation of one chunk's sampler run.
        chunk_frames, overlap_frames: the patch's Tc / To (latent frames).
        frames: latent frames sampled so far (a multiple of ``chunk_frames``).
        latent_shape: ``(B, C, T, H, W)`` of the clip's latent.
        latent_sha256: digest of the clip's final latent (fp32, contiguous).
        fingerprint: the base model's fingerprint (:mod:`rehyat.weights`).
        phi_sha256: digest of the φ tensors the model was patched with.
        noise: :data:`NOISE_SEMANTICS`.
        extra: free-form notes (e.g. the prompt schedule's start frames), not compared.
    """

    sampler_name: str
    scheduler: str
    steps: int
    cfg: float
    denoise: float
    seed: int
    sigmas: list[float]
    evaluation_sigmas: list[float]
    chunk_frames: int
    overlap_frames: int
    frames: int
    latent_shape: list[int]
    latent_sha256: str
    fingerprint: list[float]
    phi_sha256: str
    noise: str = NOISE_SEMANTICS
    extra: dict = field(default_factory=dict)


def tensor_sha256(tensor: Tensor) -> str:
    """Digest of a tensor's values as contiguous fp32 on the CPU (shape included)."""
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """Digest of named tensors (names, shapes and fp32 values, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensor_sha256(tensors[name]).encode())
    return digest.hexdigest()


def resume_file_bytes(store_bytes: int) -> int:
    """Upper bound of a resume file's size for a state store of ``store_bytes`` (header included)."""
    return int(store_bytes) + _HEADER_BYTES


def _key_name(key: StateKey, block: int, part: str) -> str:
    value, occurrence = key.conditioning
    return f"state.{key.evaluation}.{value}.{occurrence}.{key.item}.{block}.{part}"


def _parse_name(name: str, path: Path) -> tuple[StateKey, int, str]:
    pieces = name.split(".")
    if len(pieces) != 7 or pieces[0] != "state" or pieces[6] not in _PARTS:
        raise ValueError(f"resume file {path}: unexpected tensor {name!r} (not a ReHyAt resume file?)")
    try:
        evaluation, value, occurrence, item, block = (int(p) for p in pieces[1:6])
    except ValueError:
        raise ValueError(f"resume file {path}: unexpected tensor {name!r}") from None
    return StateKey(evaluation, (value, occurrence), item), block, pieces[6]


def save_resume(path: str | os.PathLike[str], store: StateStore, settings: ResumeSettings) -> Path:
    """Write ``store``'s states and ``settings`` to a **new** file at ``path`` (atomically).

    Raises:
        ValueError: the store is empty, a state saw another number of frames than
            ``settings.frames``, or a tensor holds NaN / inf (named).
        FileExistsError: ``path`` exists (nothing is overwritten).
    """
    items = store.items()
    if not items:
        raise ValueError("the state store is empty: nothing to resume from (was keep_final_states set?)")
    tensors: dict[str, Tensor] = {}
    for key, blocks in items:
        for block, state in blocks.items():
            if state.frames_seen != settings.frames:
                raise ValueError(f"state {key} block {block} saw {state.frames_seen} frames, not the clip's "
                                 f"{settings.frames}")
            for part in _PARTS:
                tensors[_key_name(key, block, part)] = getattr(state, part).detach().to("cpu").contiguous()
    require_finite(tensors, f"resume file {path}")
    header = {"format": FORMAT, "version": VERSION, "settings": asdict(settings)}
    return atomic_save_file(tensors, {FORMAT: json.dumps(header)}, path, replace=False)


def load_resume(
    path: str | os.PathLike[str], device: torch.device | str = "cpu",
) -> tuple[StateStore, ResumeSettings]:
    """Read a resume file into a new :class:`StateStore` on ``device`` and its settings.

    Raises:
        ValueError: naming the file for a missing / foreign header, a newer format version,
            unexpected tensors, NaN / inf or states that disagree with the header.
    """
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"cannot read resume file {path}: {err}") from None
    if FORMAT not in metadata:
        raise ValueError(f"{path} is not a ReHyAt resume file (no {FORMAT!r} header)")
    try:
        header = json.loads(metadata[FORMAT])
        if header.get("version", 0) > VERSION:
            raise ValueError(f"resume file {path} has format version {header.get('version')}; this ReHyAt "
                             f"reads ≤ {VERSION}: update the pack")
        settings = ResumeSettings(**header["settings"])
    except (TypeError, KeyError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"resume file {path}: malformed header ({type(err).__name__}: {err})") from None
    require_finite(tensors, f"resume file {path}")
    parts: dict[tuple[StateKey, int], dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        key, block, part = _parse_name(name, path)
        parts.setdefault((key, block), {})[part] = tensor
    store = StateStore(device)
    per_key: dict[StateKey, dict[int, RecurrentState]] = {}
    for (key, block), found in parts.items():
        missing = [p for p in _PARTS if p not in found]
        if missing:
            raise ValueError(f"resume file {path}: state {key} block {block} lacks {missing}")
        per_key.setdefault(key, {})[block] = RecurrentState(**found, frames_seen=settings.frames)
    if not per_key:
        raise ValueError(f"resume file {path} holds no states")
    for key in sorted(per_key):
        store.put(key, per_key[key])
    return store, settings


def check_extendable(frames: int, chunk_frames: int) -> None:
    """A clip can be extended exactly only when its chunks are whole (frames a multiple of Tc)."""
    require_int("frames", frames, low=1)
    if frames % chunk_frames:
        whole = max(chunk_frames, frames - frames % chunk_frames)
        video = lambda t: 4 * (t - 1) + 1  # noqa: E731 — Wan: latent frames → video frames
        raise ValueError(
            f"save_state needs whole chunks: the latent has {frames} frames, not a multiple of the patch's "
            f"chunk_frames={chunk_frames}, so the last chunk is partial and a continuation would break the "
            f"chunk grid — use {whole} or {whole + chunk_frames} latent frames "
            f"({video(whole)} or {video(whole + chunk_frames)} video frames)"
        )
