"""ComfyUI glue of the Extend Clip node: continue a saved streaming run by more chunks, exactly.

The clip's recurrent states after its last chunk come from its resume file
(:mod:`.sampling_state`); the new chunks run the saved sampler, scheduler, steps, cfg, denoise and
seed with per-frame starting noise, so ``Chunked(N) → Extend(M)`` equals ``Chunked(N + M)`` bit for
bit. Conditioning may change (a new prompt continues from the states the old one left).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..rehyat.config import require_int
from ..rehyat.integrations.comfyui_conditioning import chunk_conditioning
from ..rehyat.integrations.comfyui_memory import CHUNKED_KEY
from ..rehyat.integrations.comfyui_wan import check_chunked_sampling
from ..rehyat.streaming import ChunkProgress, ChunkStream, StateStore, check_extendable, initial_frame_noise
from ..rehyat.streaming.store import plan_state_store
from .sampling_comfy import ChunkedRun, estimate_store_bytes, peak_memory_mib
from .sampling_decode import ChunkImageWriter
from .sampling_state import RESUME_KEY, check_room, load_for_extension, resume_settings, write_resume

MAX_EXTRA_FRAMES = 4096


def run_extend_clip(
    model: Any, positive: Any, negative: Any, latent: dict, extra_frames: int, *, vae: Any = None,
    save_state: bool = False, state_device: str = "auto", node_id: str | None = None,
    filename_prefix: str = "ReHyAt/chunk", save_frames: bool = True, disable_pbar: bool | None = None,
    on_writer: Any = None,
) -> tuple[dict, torch.Tensor]:
    """Extend the LATENT's clip by ``extra_frames`` latent frames → (LATENT of the whole clip, IMAGE of
    the new frames). ``on_writer(writer)`` may attach more outputs (e.g. a growing video) to the decoder."""
    require_int("extra_frames", extra_frames, low=1, high=MAX_EXTRA_FRAMES)
    check_chunked_sampling(model)
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        raise ValueError("latent: Extend Clip needs the video LATENT (B, C, T, H, W) of a chunked run")
    store, settings = load_for_extension(model, latent, "cpu")
    b, c, n, h, w = samples.shape
    tc, total = settings.chunk_frames, n + extra_frames
    if save_state:
        check_extendable(total, tc)
    run = ChunkedRun(settings.sampler_name, "streaming", state_device, node_id, keep_final_states=save_state)
    sampling_model = model.clone()
    options = sampling_model.model_options.setdefault("transformer_options", {})
    options[CHUNKED_KEY] = {"order": "streaming", "device_state_bytes": 0}
    sigmas = comfy.samplers.KSampler(
        sampling_model, steps=settings.steps, device=model.load_device, sampler=settings.sampler_name,
        scheduler=settings.scheduler, denoise=settings.denoise, model_options=sampling_model.model_options,
    ).sigmas
    if [float(s) for s in sigmas.tolist()] != settings.sigmas:
        raise ValueError(
            "model: its sampling schedule differs from the clip's (another shift / ModelSampling node?) — "
            "extend with the model exactly as the clip was sampled"
        )
    clip_latent = torch.cat([samples.float().cpu(), torch.zeros((b, c, extra_frames, h, w))], dim=2)
    guess = estimate_store_bytes(model, clip_latent, sigmas, None, settings.sampler_name)
    load = model.load_device
    free = comfy.model_management.get_free_memory(load) if load.type != "cpu" else None
    run.store_plan = plan_state_store(state_device, load, store_bytes=guess, free_bytes=free)
    options[CHUNKED_KEY]["device_state_bytes"] = run.store_plan.reserved_bytes
    if run.store_plan.device != store.device:  # the states live where the plan says (GPU when they fit)
        moved = StateStore(run.store_plan.device)
        for key, blocks in store.items():
            moved.put(key, blocks)
        store = moved
    if save_state:
        check_room(guess)
    noise = torch.cat([torch.zeros((b, c, n, h, w)),
                       initial_frame_noise(settings.seed, (b, c, extra_frames, h, w), n)], dim=2)
    writer = ChunkImageWriter(vae, filename_prefix, save_frames) if vae is not None else None
    if writer is not None:
        if on_writer is not None:
            on_writer(writer)
        writer.warm_up(samples, tc)
    first = n // tc
    chunks = math.ceil(total / tc) - first
    run.on_chunk_finished = writer
    run.chunks, run.steps = chunks, settings.steps
    run.pbar = comfy.utils.ProgressBar(chunks * settings.steps, node_id=node_id)
    run.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    streams: list[ChunkStream] = []
    device = model.load_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    disable = (not comfy.utils.PROGRESS_BAR_ENABLED) if disable_pbar is None else disable_pbar
    try:
        result = comfy.samplers.sample(
            sampling_model, noise, positive, negative, settings.cfg, device,
            _extension_sampler(run, store, settings, first, streams), sigmas,
            model_options=sampling_model.model_options, latent_image=clip_latent, denoise_mask=None,
            callback=None, disable_pbar=disable, seed=settings.seed,
        ).to(comfy.model_management.intermediate_device())
        new = result[:, :, n:].to(samples.dtype)
        clip = torch.cat([samples.to(new.device), new], dim=2)
        out = dict(latent)
        out.pop(RESUME_KEY, None)
        out["samples"] = clip
        if save_state:
            evaluation_sigmas = streams[0].evaluation_sigmas if streams else settings.evaluation_sigmas
            resumed = resume_settings(
                model, sampler_name=settings.sampler_name, scheduler=settings.scheduler, steps=settings.steps,
                cfg=settings.cfg, denoise=settings.denoise, seed=settings.seed, sigmas=sigmas,
                evaluation_sigmas=evaluation_sigmas, samples=clip)
            out[RESUME_KEY] = write_resume(store, resumed)
    finally:
        run.state_store_bytes = store.peak_bytes
        store.clear()
    out["rehyat_stats"] = {
        "seconds": float(time.perf_counter() - start), "peak_memory_mib": peak_memory_mib(device),
        "device": str(device), "order": "streaming", "chunks": int(chunks), "extended_from": int(n),
        "state_store_mib": run.state_store_bytes / 2**20,
    }
    if RESUME_KEY in out:
        out["rehyat_stats"]["resume_file_mib"] = os.path.getsize(out[RESUME_KEY]) / 2**20
    images = writer.images() if writer is not None else torch.zeros((0, 64, 64, 3))
    return out, images


def _extension_sampler(run: ChunkedRun, store: Any, settings: Any, first: int, streams: list) -> Any:
    """A SAMPLER running chunks ``first, first + 1, …`` of the whole-clip latent it is given."""
    inner = comfy.samplers.sampler_object(settings.sampler_name)
    if not isinstance(inner, comfy.samplers.KSAMPLER):
        raise ValueError(f"sampler {settings.sampler_name!r} is not a k-diffusion sampler")

    def rehyat_extension_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = dict(extra_args or {})
        guider = model.inner_model
        base_model = guider.inner_model
        frames, steps = x.shape[2], len(sigmas) - 1
        stream = ChunkStream(
            inner.sampler_function, frames=frames, chunk_frames=settings.chunk_frames, store=store,
            seed=settings.seed, model_options=extra_args.get("model_options"), latent_hw=tuple(x.shape[3:]),
            sampler_options=inner.extra_options, first_chunk=first,
            evaluation_sigmas=settings.evaluation_sigmas, keep_final_states=run.keep_final_states)
        streams.append(stream)
        run.to_output = lambda chunk: base_model.process_latent_out(
            base_model.model_sampling.inverse_noise_scaling(sigmas[-1], chunk))
        out = x.clone()
        count = stream.chunks - first
        interrupt = comfy.model_management.throw_exception_if_processing_interrupted
        for chunk in range(first, stream.chunks):
            f0, f1 = stream.frames_of(chunk)
            number = chunk - first + 1

            def on_step(info: dict, number: int = number, f0: int = f0, f1: int = f1) -> None:
                out[:, :, f0:f1] = info["denoised"]
                step = int(info["i"]) + 1
                run.report(ChunkProgress(number, count, step, steps, "streaming", out, False, f0, f1))

            with chunk_conditioning(guider, f0, f1, frames):
                out[:, :, f0:f1] = stream.run(
                    chunk, model, x[:, :, f0:f1].clone(), sigmas, extra_args, callback=on_step,
                    disable=disable, check_interrupt=interrupt)
            run.report(ChunkProgress(number, count, steps, steps, "streaming", out, True, f0, f1))
        return out

    return comfy.samplers.KSAMPLER(rehyat_extension_sampler, inpaint_options=inner.inpaint_options)


__all__ = ["MAX_EXTRA_FRAMES", "run_extend_clip"]
