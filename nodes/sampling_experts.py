"""Two-expert chunked sampling (Wan2.2 A14B: a high-noise and a low-noise model, same architecture).

Stock graphs chain two KSamplerAdvanced nodes split at ``switch_step``:
``KSamplerAdvanced(high, add_noise, start 0, end switch_step, return_with_leftover_noise)`` →
``KSamplerAdvanced(low, no noise, start switch_step, end steps)``. :func:`run_two_expert_ksampler`
computes exactly that chain on ReHyAt-patched experts, chunk by chunk:

- **sweep**: the two phases one after the other over the whole clip, each through the chunked
  SAMPLER in sweep order — the stock chain with every model call computed chunk by chunk;
- **streaming**: chunk after chunk; inside each chunk the high-noise expert runs steps
  ``[0, switch_step)`` and the low-noise expert the rest, each continuing its **own** state store
  from the previous chunk. Each phase of each chunk is one ``comfy.samplers.sample`` call of one
  expert, so ComfyUI loads one expert at a time and never needs both resident; when both do not
  fit, it swaps them twice per chunk (``order=sweep`` swaps once per clip — pick it then).

Both orders apply ComfyUI's per-element steps (noise scaling, the latent format's in/out, leftover
noise between the phases) exactly as the stock chain does, so the result is the stock chain's, bit
for bit on CPU fp32 (tested).
"""

from __future__ import annotations

import math
import time
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
from ..rehyat.streaming import ChunkStream, StateStore
from ..rehyat.streaming.store import plan_state_store
from .sampling_comfy import (
    ChunkedRun,
    checked_latent,
    chunked_sampler,
    estimate_store_bytes,
    peak_memory_mib,
    send_progress_event,
)
from .sampling_decode import ChunkImageWriter

AUTO_SWITCH = -1
"""``switch_step`` value meaning "half of ``steps``" (the stock Wan2.2 templates' split)."""


def resolve_switch_step(switch_step: int, steps: int) -> int:
    """``switch_step`` as a step in ``[1, steps]`` (``-1``: ``steps // 2``, at least 1), or a ValueError."""
    if isinstance(switch_step, bool) or not isinstance(switch_step, int):
        raise ValueError(f"switch_step must be an integer; got {switch_step!r}")
    if switch_step == AUTO_SWITCH:
        return max(steps // 2, 1)
    if not 1 <= switch_step <= steps:
        raise ValueError(
            f"switch_step must be in [1, steps={steps}] (or -1 for half of steps); got {switch_step}: the "
            "high-noise model runs steps [0, switch_step), the low-noise model the rest"
        )
    return switch_step


def check_experts(high: Any, low: Any) -> int:
    """Both experts chunk-capable with the same chunk grid; returns Tc (a ValueError names the fix)."""
    try:
        patch_low = check_chunked_sampling(low)
    except ValueError as err:
        raise ValueError(f"low_noise_model: {err}") from None
    patch_high = check_chunked_sampling(high)
    tc_high, tc_low = patch_high.config.attention.chunk_frames, patch_low.config.attention.chunk_frames
    if tc_high != tc_low:
        raise ValueError(
            f"model (Tc={tc_high}) and low_noise_model (Tc={tc_low}) chunk the clip differently; patch both "
            "with the same chunk_frames (their φ files must have been distilled with the same Tc)"
        )
    if high.model.latent_format.__class__ is not low.model.latent_format.__class__:
        raise ValueError("model and low_noise_model use different latent formats: they are not two experts "
                         "of one Wan model")
    return tc_high


class _Expert:
    """One expert's sampling clone, sigmas of its phase and (streaming) its state store."""

    def __init__(self, model: Any, sigmas: torch.Tensor, run: ChunkedRun, latent: torch.Tensor,
                 state_device: str, order: str, reserved_by_other: int = 0) -> None:
        self.model = model.clone()
        self.options = self.model.model_options.setdefault("transformer_options", {})
        self.options[CHUNKED_KEY] = {"order": order, "device_state_bytes": 0}
        self.sigmas, self.run, self.store = sigmas, run, None
        if order == "streaming":
            guess = estimate_store_bytes(model, latent, sigmas, None, run.sampler_name)
            load = model.load_device
            free = comfy.model_management.get_free_memory(load) if load.type != "cpu" else None
            if free is not None:
                free = max(free - reserved_by_other, 0)  # the other expert's store stays on the device too
            run.store_plan = plan_state_store(state_device, load, store_bytes=guess, free_bytes=free)
            self.store = StateStore(run.store_plan.device)

    @property
    def reserved_bytes(self) -> int:
        """Device bytes this expert's state store takes (0 when offloaded or sweep)."""
        return self.run.store_plan.reserved_bytes if self.store is not None and self.run.store_plan else 0

    def reserve(self, device_state_bytes: int) -> None:
        """Make ComfyUI keep ``device_state_bytes`` free when it loads this expert (both stores)."""
        self.options[CHUNKED_KEY]["device_state_bytes"] = int(device_state_bytes)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def plan_experts(model: Any, low_noise_model: Any, runs: list[ChunkedRun], latent: torch.Tensor, *,
                 steps: int, switch: int, scheduler: str, denoise: float, state_device: str, order: str,
                 ) -> tuple[_Expert, _Expert]:
    """Both experts' sampling clones, phase sigmas and state stores, with memory sized for **both**
    stores: whichever expert ComfyUI loads, the two stores stay on the device (when they live there)."""
    sampler_name = runs[0].sampler_name
    high = _Expert(model, _phase_sigmas(model, steps, sampler_name, scheduler, denoise, 0, switch), runs[0],
                   latent, state_device, order)
    low_sigmas = _phase_sigmas(low_noise_model, steps, sampler_name, scheduler, denoise, switch, 10000)
    low = _Expert(low_noise_model, low_sigmas, runs[1], latent, state_device, order,
                  reserved_by_other=high.reserved_bytes)
    for expert in (high, low):
        expert.reserve(high.reserved_bytes + low.reserved_bytes)
    return high, low


def _phase_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float,
                  start: int, end: int) -> torch.Tensor:
    """The sigmas KSamplerAdvanced(start_step=start, last_step=end) runs on ``model`` (no full denoise)."""
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                     scheduler=scheduler, denoise=denoise,
                                     model_options=model.model_options).sigmas
    if end < len(sigmas) - 1:
        sigmas = sigmas[:end + 1]
    return sigmas[start:]


def run_two_expert_ksampler(
    model: Any, low_noise_model: Any, switch_step: int, seed: int, steps: int, cfg: float, sampler_name: str,
    scheduler: str, positive: Any, negative: Any, latent: dict, denoise: float = 1.0, *,
    order: str = "streaming", state_device: str = "auto", vae: Any = None, node_id: str | None = None,
    filename_prefix: str = "ReHyAt/chunk", save_frames: bool = True, disable_pbar: bool | None = None,
    on_writer: Any = None,
) -> tuple[dict, torch.Tensor]:
    """The Chunked Sampler with two experts: the stock two-KSamplerAdvanced chain, chunk by chunk.

    Returns ``(LATENT dict with rehyat_stats, IMAGE)`` like :func:`.sampling_comfy.run_chunked_ksampler`.
    """
    tc = check_experts(model, low_noise_model)
    switch = resolve_switch_step(switch_step, steps)
    latent_image = checked_latent(model, scheduler, denoise, latent)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    mask = latent.get("noise_mask")
    frames = latent_image.shape[2]
    chunks = math.ceil(frames / tc)
    runs = [ChunkedRun(sampler_name, order, state_device, node_id) for _ in range(2)]
    high, low = plan_experts(model, low_noise_model, runs, latent_image, steps=steps, switch=switch,
                             scheduler=scheduler, denoise=denoise, state_device=state_device, order=order)
    writer = ChunkImageWriter(vae, filename_prefix, save_frames) if vae is not None else None
    if writer is not None and on_writer is not None:
        on_writer(writer)
    pbar = comfy.utils.ProgressBar(chunks * steps, node_id=node_id)
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    disable = (not comfy.utils.PROGRESS_BAR_ENABLED) if disable_pbar is None else disable_pbar
    device = model.load_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()

    def sample(expert: _Expert, phase_noise: torch.Tensor, phase_latent: torch.Tensor, sampler: Any,
               ) -> torch.Tensor:
        if expert.steps < 1:  # KSamplerAdvanced with start_step ≥ steps returns its latent unchanged
            return phase_latent
        return comfy.samplers.sample(
            expert.model, phase_noise, positive, negative, cfg, expert.model.load_device, sampler,
            expert.sigmas, model_options=expert.model.model_options, latent_image=phase_latent,
            denoise_mask=mask, callback=None, disable_pbar=disable, seed=seed,
        ).to(comfy.model_management.intermediate_device())

    zeros = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                        device="cpu")  # the second KSamplerAdvanced adds no noise
    if order == "sweep":
        for run, offset in ((runs[0], 0), (runs[1], switch)):
            run.pbar = _OffsetProgressBar(pbar, offset, steps, chunks)
        leftover = sample(high, noise, latent_image, chunked_sampler(runs[0]))
        samples = sample(low, zeros, leftover, chunked_sampler(runs[1]))
        if writer is not None:
            for f0 in range(0, frames, tc):
                writer(samples[:, :, f0:f0 + tc], f0, min(f0 + tc, frames))
    else:
        inner = comfy.samplers.sampler_object(sampler_name)
        if not isinstance(inner, comfy.samplers.KSAMPLER):
            raise ValueError(f"sampler {sampler_name!r} is not a k-diffusion sampler and cannot run chunked")
        streams, inpaint = {}, inner.inpaint_options
        for expert in (high, low):
            streams[id(expert)] = ChunkStream(
                inner.sampler_function, frames=frames, chunk_frames=tc, store=expert.store, seed=seed,
                model_options=expert.model.model_options, latent_hw=tuple(latent_image.shape[3:]),
                sampler_options=inner.extra_options)
        leftover, samples = latent_image.clone(), latent_image.clone()
        try:
            for chunk in range(chunks):
                f0, f1 = chunk * tc, min((chunk + 1) * tc, frames)

                def report(step: int, offset: int, chunk: int = chunk) -> None:
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    pbar.update_absolute(chunk * steps + offset + step, chunks * steps)
                    send_progress_event({"node": node_id, "chunk": chunk + 1, "chunks": chunks,
                                         "step": offset + step, "steps": steps, "order": "streaming",
                                         "expert": "high" if offset == 0 else "low"})

                phase = _one_chunk_sampler(streams[id(high)], chunk, lambda s: report(s, 0), inpaint)
                out = sample(high, noise, latent_image, phase)
                leftover[:, :, f0:f1] = out[:, :, f0:f1]
                phase = _one_chunk_sampler(streams[id(low)], chunk, lambda s: report(s, switch), inpaint)
                out = sample(low, zeros, leftover, phase)
                samples[:, :, f0:f1] = out[:, :, f0:f1]
                piece = samples[:, :, f0:f1]
                preview = previewer.decode_latent_to_preview_image("JPEG", piece) if previewer else None
                pbar.update_absolute((chunk + 1) * steps, chunks * steps, preview)
                if writer is not None:
                    writer(piece, f0, f1)
        finally:
            for expert in (high, low):
                expert.run.state_store_bytes = expert.store.peak_bytes
                expert.store.clear()
    seconds = time.perf_counter() - start
    out_latent = dict(latent)
    out_latent["samples"] = samples
    out_latent["rehyat_stats"] = {
        "seconds": float(seconds), "peak_memory_mib": peak_memory_mib(device), "device": str(device),
        "order": order, "chunks": int(chunks), "switch_step": int(switch),
        "state_store_mib": (runs[0].state_store_bytes + runs[1].state_store_bytes) / 2**20,
        "state_store_mib_per_expert": [runs[0].state_store_bytes / 2**20, runs[1].state_store_bytes / 2**20],
    }
    images = writer.images() if writer is not None else torch.zeros((0, 64, 64, 3))
    return out_latent, images


def _one_chunk_sampler(stream: ChunkStream, chunk: int, on_step: Any, inpaint_options: dict) -> Any:
    """A SAMPLER that runs only chunk ``chunk`` of the (whole-clip) latent it is given, through ``stream``.

    The other frames come back as they went in; the caller keeps only the chunk's frames.
    """
    def one_chunk(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        guider = model.inner_model
        f0, f1 = stream.frames_of(chunk)
        out = x.clone()
        with chunk_conditioning(guider, f0, f1, x.shape[2]):
            out[:, :, f0:f1] = stream.run(
                chunk, model, x[:, :, f0:f1].clone(), sigmas, dict(extra_args or {}),
                callback=lambda info: on_step(int(info["i"]) + 1), disable=disable,
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
            )
        return out

    return comfy.samplers.KSAMPLER(one_chunk, inpaint_options=inpaint_options)


class _OffsetProgressBar:
    """A phase's view of the clip's progress bar (sweep order): steps after ``offset`` of ``steps``."""

    def __init__(self, pbar: Any, offset: int, steps: int, chunks: int) -> None:
        self.pbar, self.offset, self.steps, self.chunks = pbar, offset, steps, chunks

    def update_absolute(self, position: int, total: int, preview: Any = None) -> None:
        phase_steps = max(total // max(self.chunks, 1), 1)
        step = (position - 1) // self.chunks + 1 if position else 0
        done = (self.offset + min(step, phase_steps)) * self.chunks
        self.pbar.update_absolute(done, self.steps * self.chunks, preview)


__all__ = ["AUTO_SWITCH", "check_experts", "plan_experts", "resolve_switch_step",
           "run_two_expert_ksampler"]
