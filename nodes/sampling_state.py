"""ComfyUI glue of extendable clips: the resume file's folder, its settings, writing it and checking it.

A Chunked Sampler run with ``save_state`` ends by writing ``output/rehyat_states/<prefix>_NNNNN_.safetensors``
(:mod:`rehyat.streaming.resume`) and puts its path in the LATENT under ``"rehyat_resume"``; the Extend
Clip node reads it back and refuses a continuation on anything that differs, naming the setting.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import folder_paths
import torch

from ..rehyat.file_names import resolve_in_folder
from ..rehyat.integrations.comfyui_wan import check_chunked_sampling, comfy_fingerprint
from ..rehyat.streaming import ResumeSettings, StateStore, load_resume, resume_file_bytes, save_resume
from ..rehyat.streaming.resume import tensor_sha256, tensors_sha256
from ..rehyat.weights import collect_phi_tensors, fingerprints_match
from .folders import save_numbered

LOG = logging.getLogger("rehyat")
STATES_FOLDER = "rehyat_states"
RESUME_KEY = "rehyat_resume"  # LATENT entry: the resume file's path
STATE_PREFIX = "ReHyAt_clip"


def register_states_folder() -> str:
    """Register ``<output>/rehyat_states`` (created by the first save); returns its path."""
    path = os.path.join(folder_paths.get_output_directory(), STATES_FOLDER)
    if STATES_FOLDER not in folder_paths.folder_names_and_paths or path not in \
            folder_paths.folder_names_and_paths[STATES_FOLDER][0]:
        folder_paths.add_model_folder_path(STATES_FOLDER, path, is_default=True)
        paths, _ = folder_paths.folder_names_and_paths[STATES_FOLDER]
        folder_paths.folder_names_and_paths[STATES_FOLDER] = (paths, {".safetensors"})
    return path


def phi_sha256(model: Any) -> str:
    """Digest of the φ tensors a patched model carries (its φ file's identity)."""
    return tensors_sha256(collect_phi_tensors(check_chunked_sampling(model).hybrid))


def check_room(store_bytes: int, parameter: str = "save_state") -> int:
    """Refuse (before sampling) when the states folder's disk cannot hold the resume file; its size."""
    size = resume_file_bytes(store_bytes)
    folder = register_states_folder()
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < size:
        raise ValueError(
            f"{parameter}: the resume file needs ≈ {size / 2**20:.1f} MiB but {probe} has only "
            f"{free / 2**20:.1f} MiB free — free some space or turn {parameter} off"
        )
    LOG.info("ReHyAt: the resume file will take ≈ %.1f MiB in %s", size / 2**20, folder)
    return size


def resume_settings(model: Any, *, sampler_name: str, scheduler: str, steps: int, cfg: float, denoise: float,
                    seed: int, sigmas: torch.Tensor, evaluation_sigmas: list[float], samples: torch.Tensor,
                    extra: dict | None = None) -> ResumeSettings:
    """The settings a continuation of ``samples`` (the LATENT's clip) must reuse."""
    attention = check_chunked_sampling(model).config.attention
    return ResumeSettings(
        sampler_name=sampler_name, scheduler=scheduler, steps=int(steps), cfg=float(cfg),
        denoise=float(denoise), seed=int(seed), sigmas=[float(s) for s in sigmas.flatten().tolist()],
        evaluation_sigmas=[float(s) for s in evaluation_sigmas], chunk_frames=attention.chunk_frames,
        overlap_frames=attention.overlap_frames, frames=int(samples.shape[2]),
        latent_shape=[int(n) for n in samples.shape], latent_sha256=tensor_sha256(samples),
        fingerprint=comfy_fingerprint(model), phi_sha256=phi_sha256(model), extra=dict(extra or {}),
    )


def write_resume(store: StateStore, settings: ResumeSettings, prefix: str = STATE_PREFIX) -> str:
    """Write a new numbered resume file in ``output/rehyat_states``; returns its absolute path."""
    register_states_folder()
    path = save_numbered(STATES_FOLDER, prefix, lambda p: save_resume(p, store, settings), "save_state")
    size = os.path.getsize(path)
    LOG.info("ReHyAt: saved the clip's state (%d latent frames, %.1f MiB) to %s", settings.frames,
             size / 2**20, path)
    return str(path)


def resume_path(latent: dict) -> Path:
    """The resume file a LATENT points at; it must lie in the states folder."""
    value = latent.get(RESUME_KEY) if isinstance(latent, dict) else None
    if not value:
        raise ValueError(
            "latent carries no rehyat_resume: connect the LATENT of a ReHyAt Chunked Sampler (or Extend "
            "Clip) run with save_state on"
        )
    folders = [os.path.abspath(f) for f in folder_paths.get_folder_paths(STATES_FOLDER)] \
        if STATES_FOLDER in folder_paths.folder_names_and_paths else [register_states_folder()]
    path = Path(os.path.abspath(str(value)))
    for folder in folders:
        try:
            relative = path.relative_to(folder)
        except ValueError:
            continue
        found = resolve_in_folder(folder, relative.as_posix(), must_exist=False)
        if not found.is_file():
            raise ValueError(f"latent's rehyat_resume file {found} no longer exists (deleted or moved?)")
        return found
    raise ValueError(f"latent's rehyat_resume {str(value)!r} is not inside the states folder {folders}")


def load_for_extension(model: Any, latent: dict, store_device: torch.device | str) -> tuple[StateStore,
                                                                                             ResumeSettings]:
    """Read the LATENT's resume file and refuse any mismatch with ``model`` and the latent, by name."""
    path = resume_path(latent)
    store, settings = load_resume(path, device=store_device)
    attention = check_chunked_sampling(model).config.attention
    for name in ("chunk_frames", "overlap_frames"):
        saved, ours = getattr(settings, name), getattr(attention, name)
        if saved != ours:
            raise ValueError(f"model: the clip was sampled with {name}={saved}, this patched model uses "
                             f"{ours} — patch it like the original run")
    if not fingerprints_match(settings.fingerprint, comfy_fingerprint(model)):
        raise ValueError("model: another checkpoint than the clip's (fingerprints differ) — extend with the "
                         "model the clip was sampled with")
    if settings.phi_sha256 != phi_sha256(model):
        raise ValueError("model: patched with another φ than the clip's — load the φ file the clip was "
                         "sampled with")
    samples = latent["samples"]
    if [int(n) for n in samples.shape] != settings.latent_shape:
        raise ValueError(f"latent: shape {list(samples.shape)} is not the saved clip's "
                         f"{settings.latent_shape} (connect the LATENT the state was saved with)")
    if tensor_sha256(samples) != settings.latent_sha256:
        raise ValueError("latent: its values are not the saved clip's (edited after sampling?) — connect the "
                         "LATENT the state was saved with")
    return store, settings
