"""ComfyUI glue of the ReHyAt chunked samplers: SAMPLER objects, progress, previews, decode, stats.

The maths lives in ``rehyat.streaming`` (drivers, state store, noise, progressive decoder) and
``rehyat.integrations`` (``comfyui_chunks``: the chunked DiT forward, ``comfyui_memory``: memory
sizing, ``comfyui_conditioning``: a chunk's conds); this module binds
them to ComfyUI's samplers, progress bar, latent previews, websocket, VAE and output folder.

Python entry points (used by the nodes, tests and benchmarks):

- :func:`chunked_sampler` → a ComfyUI ``SAMPLER`` (``KSAMPLER``) running any named sampler chunk by
  chunk, for ``comfy.samplers.sample`` / ``SamplerCustom(Advanced)``.
- :func:`run_chunked_ksampler` → what the ReHyAt Chunked Sampler node does (KSampler inputs).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..rehyat.integrations.comfyui_conditioning import chunk_conditioning
from ..rehyat.integrations.comfyui_memory import CHUNKED_KEY
from ..rehyat.integrations.comfyui_wan import check_chunked_sampling
from ..rehyat.streaming import (
    ORDERS,
    STATE_DEVICES,
    ChunkProgress,
    StateStore,
    check_extendable,
    check_streamable,
    initial_frame_noise,
    sample_streaming,
    sample_sweep,
    state_store_bytes,
)
from ..rehyat.streaming.accounting import conditionings_per_evaluation, evaluations_per_step
from ..rehyat.streaming.store import StorePlan, plan_state_store
from .sampling_decode import ChunkImageWriter
from .sampling_state import RESUME_KEY, check_room, resume_settings, write_resume

LOG = logging.getLogger("rehyat")
PROGRESS_EVENT = "rehyat.chunk_progress"


@dataclass
class ChunkedRun:
    """Settings and record of one chunked sampling run (shared by the SAMPLER and the node)."""

    sampler_name: str
    order: str = "streaming"
    state_device: str = "auto"
    node_id: str | None = None
    on_chunk_finished: Any = None  # (output latent chunk (B, C, n, H, W), frame_start, frame_end) -> None
    to_output: Any = None  # model-space latent → the sampler's output space (set while sampling)
    pbar: Any = None
    previewer: Any = None
    chunks: int = 0
    steps: int = 0
    state_store_bytes: int = 0
    store_device: str = ""
    store_plan: StorePlan | None = None  # decided once before loading (reservation and store agree)
    keep_final_states: bool = False  # streaming: keep the last chunk's states (save_state)
    final_store: StateStore | None = None  # set after the run when keep_final_states
    evaluation_sigmas: list[float] = field(default_factory=list)  # sigma of each evaluation of a chunk
    last_reported: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}; got {self.order!r}")
        if self.state_device not in STATE_DEVICES:
            raise ValueError(f"state_device must be one of {STATE_DEVICES}; got {self.state_device!r}")
        if self.sampler_name not in comfy.samplers.KSampler.SAMPLERS:
            raise ValueError(f"sampler_name must be one of ComfyUI's samplers; got {self.sampler_name!r}")
        if self.order == "streaming":
            check_streamable(self.sampler_name)

    def report(self, progress: ChunkProgress) -> None:
        """Progress bar (chunk i/n × step s/S), latent preview of finished chunks, websocket event."""
        self.chunks, self.steps = progress.chunks, progress.steps
        total = progress.chunks * progress.steps
        if progress.order == "streaming":
            position = (progress.chunk - 1) * progress.steps + progress.step
        else:
            position = (progress.step - 1) * progress.chunks + progress.chunk
        preview = None
        if progress.finished and progress.latent is not None and self.previewer is not None:
            chunk = progress.latent[:, :, progress.frame_start:progress.frame_end]
            preview = self.previewer.decode_latent_to_preview_image("JPEG", chunk)
        if self.pbar is not None and (position != self.last_reported or preview is not None):
            self.pbar.update_absolute(position, total, preview)
        self.last_reported = position
        send_progress_event({"node": self.node_id, "chunk": progress.chunk, "chunks": progress.chunks,
                             "step": progress.step, "steps": progress.steps, "order": progress.order})
        if progress.finished and progress.order == "streaming" and self.on_chunk_finished is not None:
            chunk = progress.latent[:, :, progress.frame_start:progress.frame_end]
            if self.to_output is not None:
                chunk = self.to_output(chunk)
            self.on_chunk_finished(chunk, progress.frame_start, progress.frame_end)


def send_progress_event(data: dict) -> None:
    """``PromptServer.instance.send_sync("rehyat.chunk_progress", data)`` when a server is running."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is not None:
        instance.send_sync(PROGRESS_EVENT, data)


def chunked_sampler(run: ChunkedRun) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER that runs ``run.sampler_name`` chunk by chunk in ``run.order``."""
    inner = comfy.samplers.sampler_object(run.sampler_name)
    if not isinstance(inner, comfy.samplers.KSAMPLER):
        raise ValueError(f"sampler {run.sampler_name!r} is not a k-diffusion sampler and cannot run chunked")

    def rehyat_chunked_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = dict(extra_args or {})
        guider = model.inner_model
        patcher = guider.model_patcher
        patch = check_chunked_sampling(patcher)
        tc = patch.config.attention.chunk_frames
        interrupt = comfy.model_management.throw_exception_if_processing_interrupted
        base_model = guider.inner_model  # what KSAMPLER / the guider apply to the final samples

        def to_output(chunk: torch.Tensor) -> torch.Tensor:
            chunk = base_model.model_sampling.inverse_noise_scaling(sigmas[-1], chunk)
            return base_model.process_latent_out(chunk)

        run.to_output = to_output
        if run.order == "sweep":
            return sample_sweep(
                inner.sampler_function, model, x, sigmas, extra_args=extra_args, chunk_frames=tc,
                sampler_options=inner.extra_options, callback=callback, disable=disable, progress=run.report,
                check_interrupt=interrupt,
            )
        estimate = estimate_store_bytes(patcher, x, sigmas, guider, run.sampler_name)
        free = comfy.model_management.get_free_memory(x.device) if x.device.type != "cpu" else None
        plan = run.store_plan or plan_state_store(run.state_device, x.device, store_bytes=estimate,
                                                  free_bytes=free)
        store = StateStore(plan.device)
        run.store_device = str(store.device)
        LOG.info("ReHyAt streaming: state store ≈ %.1f MiB on %s (%s)", estimate / 2**20, store.device,
                 run.sampler_name)
        streams = []
        try:
            return sample_streaming(
                inner.sampler_function, model, x, sigmas, extra_args=extra_args, chunk_frames=tc, store=store,
                sampler_options=inner.extra_options, callback=callback, disable=disable, progress=run.report,
                check_interrupt=interrupt,
                chunk_scope=lambda f0, f1: chunk_conditioning(guider, f0, f1, x.shape[2]),
                on_stream=streams.append, keep_final_states=run.keep_final_states,
            )
        finally:
            run.state_store_bytes = store.peak_bytes
            run.evaluation_sigmas = streams[0].evaluation_sigmas if streams else []
            if run.keep_final_states:
                run.final_store = store
            else:
                store.clear()

    return comfy.samplers.KSAMPLER(rehyat_chunked_sampler, inpaint_options=inner.inpaint_options)


def estimate_store_bytes(
    patcher: Any, x: torch.Tensor, sigmas: torch.Tensor, guider: Any, sampler_name: str,
) -> int:
    """The streaming state store's size by :func:`rehyat.streaming.state_store_bytes` (before sampling)."""
    patch = check_chunked_sampling(patcher)
    wan = patcher.get_model_object("diffusion_model")
    attention = patch.config.attention
    conds = getattr(guider, "conds", None) or {}
    conditionings = conditionings_per_evaluation(getattr(guider, "cfg", 2.0),
                                                 {name: len(v) for name, v in conds.items()} or None)
    steps = len(sigmas) - 1
    ph, pw = wan.patch_size[1], wan.patch_size[2]
    return state_store_bytes(
        evaluations=steps * evaluations_per_step(sampler_name), conditionings=conditionings,
        batch=x.shape[0], blocks=len(patch.blocks), heads=wan.num_heads, head_dim=wan.dim // wan.num_heads,
        feature_dim=attention.feature_map.feature_dim, overlap_frames=attention.overlap_frames,
        tokens_per_frame=math.ceil(x.shape[3] / ph) * math.ceil(x.shape[4] / pw),
        overlap_bytes_per_element=torch.finfo(patcher.model_dtype()).bits // 8,
    )


def run_chunked_ksampler(
    model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: Any,
    negative: Any, latent: dict, denoise: float = 1.0, *, order: str = "streaming",
    state_device: str = "auto", vae: Any = None, node_id: str | None = None,
    filename_prefix: str = "ReHyAt/chunk", save_frames: bool = True, disable_pbar: bool | None = None,
    save_state: bool = False, on_writer: Any = None,
) -> tuple[dict, torch.Tensor]:
    """The ReHyAt Chunked Sampler: KSampler inputs → (LATENT dict with ``rehyat_stats``, IMAGE).

    ``save_state``: draw the starting noise per latent frame (:func:`rehyat.streaming.initial_frame_noise`)
    and, after the last chunk, write every evaluation's recurrent states to a resume file whose path
    the LATENT carries under ``"rehyat_resume"`` (streaming order, whole chunks) — the Extend Clip
    node continues it exactly. ``on_writer(writer)`` may attach more outputs to the chunk decoder.
    """
    patch = check_chunked_sampling(model)
    latent_image = checked_latent(model, scheduler, denoise, latent)
    tc = patch.config.attention.chunk_frames
    if save_state:
        check_save_state(order, latent, latent_image.shape[2], tc)
        noise = initial_frame_noise(seed, tuple(latent_image.shape))
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    run = ChunkedRun(sampler_name, order, state_device, node_id, keep_final_states=bool(save_state))
    writer = ChunkImageWriter(vae, filename_prefix, save_frames) if vae is not None else None
    if writer is not None and on_writer is not None:
        on_writer(writer)
    run.on_chunk_finished = writer
    run.chunks, run.steps = math.ceil(latent_image.shape[2] / tc), steps
    run.pbar = comfy.utils.ProgressBar(run.chunks * steps, node_id=node_id)
    run.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    sampling_model = model.clone()
    options = sampling_model.model_options.setdefault("transformer_options", {})
    options[CHUNKED_KEY] = {"order": order, "device_state_bytes": 0}
    sigmas = comfy.samplers.KSampler(
        sampling_model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
        denoise=denoise, model_options=sampling_model.model_options,
    ).sigmas
    if order == "streaming":  # one decision ("gpu", or "auto" choosing the GPU) for reservation and store
        guess = estimate_store_bytes(model, latent_image, sigmas, None, sampler_name)
        load = model.load_device
        free = comfy.model_management.get_free_memory(load) if load.type != "cpu" else None
        run.store_plan = plan_state_store(state_device, load, store_bytes=guess, free_bytes=free)
        options[CHUNKED_KEY]["device_state_bytes"] = run.store_plan.reserved_bytes  # prepare-sampling wrapper
        if save_state:
            check_room(guess)
    device = model.load_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    disable = (not comfy.utils.PROGRESS_BAR_ENABLED) if disable_pbar is None else disable_pbar
    samples = comfy.samplers.sample(
        sampling_model, noise, positive, negative, cfg, device, chunked_sampler(run), sigmas,
        model_options=sampling_model.model_options, latent_image=latent_image,
        denoise_mask=latent.get("noise_mask"), callback=None, disable_pbar=disable, seed=seed,
    ).to(comfy.model_management.intermediate_device())
    if writer is not None and order == "sweep":  # nothing was final before the last step: decode now
        for f0 in range(0, samples.shape[2], tc):
            writer(samples[:, :, f0:f0 + tc], f0, min(f0 + tc, samples.shape[2]))
    seconds = time.perf_counter() - start
    out = dict(latent)
    out.pop(RESUME_KEY, None)
    out["samples"] = samples
    if save_state:
        try:
            settings = resume_settings(model, sampler_name=sampler_name, scheduler=scheduler, steps=steps,
                                       cfg=cfg, denoise=denoise, seed=seed, sigmas=sigmas,
                                       evaluation_sigmas=run.evaluation_sigmas, samples=samples)
            out[RESUME_KEY] = write_resume(run.final_store, settings)
        finally:
            run.final_store.clear()
    out["rehyat_stats"] = {
        "seconds": float(seconds), "peak_memory_mib": peak_memory_mib(device), "device": str(device),
        "order": order, "chunks": int(run.chunks), "state_store_mib": run.state_store_bytes / 2**20,
    }
    if RESUME_KEY in out:
        out["rehyat_stats"]["resume_file_mib"] = os.path.getsize(out[RESUME_KEY]) / 2**20
    images = writer.images() if writer is not None else torch.zeros((0, 64, 64, 3))
    return out, images


def checked_latent(model: Any, scheduler: str, denoise: float, latent: dict) -> torch.Tensor:
    """The KSampler-style inputs every chunked sampler checks; returns the video latent to sample."""
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"scheduler must be one of ComfyUI's schedulers; got {scheduler!r}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1]; got {denoise!r}")
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if latent_image.ndim != 5 or getattr(latent_image, "is_nested", False):
        raise ValueError(
            f"the chunked sampler needs a video latent (B, C, T, H, W); got {tuple(latent_image.shape)}")
    return latent_image


def check_save_state(order: str, latent: dict, frames: int, chunk_frames: int) -> None:
    """Refuse ``save_state`` settings a continuation could not reproduce, naming what to change."""
    if order != "streaming":
        raise ValueError("save_state needs order='streaming' (same result as sweep): the states after the "
                         "last chunk are what a continuation starts from")
    for key, why in (("noise_mask", "a noise mask"), ("batch_index", "a batch_index")):
        if latent.get(key) is not None:
            raise ValueError(f"save_state: the latent carries {why}, which an extension cannot continue — "
                             "sample from a plain empty video latent")
    check_extendable(frames, chunk_frames)


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated memory of this run on CUDA; on CPU the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20
