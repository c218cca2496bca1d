"""Nodes: the ReHyAt Chunked Sampler (a chunked recurrent KSampler) and the ReHyAt Streaming Sampler
(a SAMPLER for SamplerCustom / SamplerCustomAdvanced). Thin: inputs → ``sampling_comfy`` → outputs."""

from __future__ import annotations

import logging

import comfy.samplers
from comfy_api.latest import io

from ..rehyat.streaming import ORDERS, STATE_DEVICES
from .extend import SAVE_STATE_TIP
from .sampling_comfy import ChunkedRun, chunked_sampler, run_chunked_ksampler
from .sampling_experts import AUTO_SWITCH, run_two_expert_ksampler
from .sampling_video import DEFAULT_FPS, VIDEO_INPUTS, growing_video

CATEGORY = "ReHyAt/sampling"
LOG = logging.getLogger("rehyat")
_ORDER_TIP = (
    "streaming: chunk after chunk, each runs every step (finished chunks are previewed, decoded and saved "
    "while the next one samples; needs a fixed-step sampler). sweep: step after step over the whole clip, "
    "each model call computed chunk by chunk (any sampler; frames only at the end). Same result."
)
_STATE_TIP = (
    "where the streaming order keeps the recurrent states of every model evaluation between chunks: "
    "cpu = offloaded (pinned on CUDA), gpu = on the compute device, auto = the GPU only when the store "
    "takes at most a quarter of its free memory"
)
_SAMPLER_TIP = "ComfyUI sampler run chunk by chunk (adaptive dpm_adaptive / dpm_fast only with order=sweep)"
_MODEL_TIP = ("a Wan model from ReHyAt Patch Model: every block converted and causal (with low_noise_model: "
              "the Wan2.2 high-noise expert)")
_LOW_TIP = (
    "optional, Wan2.2 A14B: the low-noise expert, patched like model (all blocks, causal, same chunk_frames, "
    "its own φ). Steps [0, switch_step) use model, the rest this one — inside every chunk, each expert with "
    "its own recurrent states; equal to the stock chain of two KSamplerAdvanced nodes split at switch_step. "
    "Streaming loads one expert at a time (twice per chunk when both do not fit: then order=sweep is faster)"
)
_SWITCH_TIP = ("with low_noise_model: the first step of the low-noise expert, 1–steps; -1 = half of steps "
               "(the stock Wan2.2 templates' split). Ignored without low_noise_model")
_SAMPLERS = comfy.samplers.KSampler.SAMPLERS
_SCHEDULERS = comfy.samplers.KSampler.SCHEDULERS


class ReHyAtChunkedSampler(io.ComfyNode):
    """KSampler that runs a recurrent ReHyAt Wan2.1 chunk by chunk, decoding chunks as they land."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """KSampler inputs plus order / state_device / optional VAE; outputs LATENT and IMAGE."""
        return io.Schema(
            node_id="ReHyAtChunkedSampler",
            display_name="ReHyAt Chunked Sampler",
            category=CATEGORY,
            description=(
                "A KSampler for ReHyAt-patched Wan2.1 that emits the latent chunk by chunk (Tc latent frames "
                "at a time) in constant memory: ComfyUI sizes memory for one chunk, finished chunks are "
                "previewed and — with a VAE — decoded with the causal cache carried over and saved as PNGs "
                "while the next chunk samples. Same numbers as the KSampler on the parallel model."
            ),
            inputs=[
                io.Model.Input("model", tooltip=_MODEL_TIP),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="seed of the initial noise (the KSampler's) and of ancestral/SDE noise"),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="denoising steps per chunk"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="classifier-free guidance scale (cond and uncond keep own states)"),
                io.Combo.Input("sampler_name", options=_SAMPLERS, tooltip=_SAMPLER_TIP),
                io.Combo.Input("scheduler", options=_SCHEDULERS,
                               tooltip="ComfyUI scheduler giving the sigmas every chunk runs"),
                io.Conditioning.Input("positive", tooltip="the prompt to follow"),
                io.Conditioning.Input("negative", tooltip="the prompt to steer away from"),
                io.Latent.Input("latent_image", tooltip="video latent (B, 16, T, H, W) to denoise"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the schedule to run (< 1 keeps part of latent_image)"),
                io.Combo.Input("order", options=list(ORDERS), default="streaming", tooltip=_ORDER_TIP),
                io.Combo.Input("state_device", options=list(STATE_DEVICES), default="auto",
                               tooltip=_STATE_TIP),
                io.Vae.Input("vae", optional=True,
                             tooltip="Wan2.1 VAE: decode each finished chunk at once and save numbered PNGs "
                                     "(output/ReHyAt/chunk_*); without it IMAGE is empty"),
                io.Model.Input("low_noise_model", optional=True, tooltip=_LOW_TIP),
                io.Int.Input("switch_step", default=AUTO_SWITCH, min=AUTO_SWITCH, max=10000, optional=True,
                             tooltip=_SWITCH_TIP),
                io.Boolean.Input("save_state", default=False, optional=True, tooltip=SAVE_STATE_TIP),
                *VIDEO_INPUTS,
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT",
                                 tooltip="the denoised latent (with rehyat_stats: seconds, peak memory, …)"),
                io.Image.Output(display_name="IMAGE",
                                tooltip="decoded frames (an empty batch without a VAE)"),
            ],
            hidden=[io.Hidden.unique_id],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise, order, state_device, vae=None, low_noise_model=None,
                switch_step=AUTO_SWITCH, save_state=False, video_prefix="", fps=DEFAULT_FPS) -> io.NodeOutput:
        """Sample ``latent_image`` chunk by chunk; decode and save chunks as they land when a VAE is given.

        With ``low_noise_model`` (Wan2.2 A14B), ``model`` runs steps ``[0, switch_step)`` and the
        low-noise expert the rest, in every chunk (:mod:`.sampling_experts`). ``save_state`` makes the
        clip extendable (:mod:`.sampling_state`); ``video_prefix`` grows an MP4 chunk by chunk.
        """
        with growing_video(video_prefix, fps, vae) as attach:
            if low_noise_model is not None:
                if save_state:
                    raise ValueError("save_state is not supported with a low_noise_model yet: extend a "
                                     "single-model clip, or turn save_state off")
                latent, images = run_two_expert_ksampler(
                    model, low_noise_model, switch_step, seed, steps, cfg, sampler_name, scheduler, positive,
                    negative, latent_image, denoise, order=order, state_device=state_device, vae=vae,
                    node_id=_unique_id(cls), on_writer=attach,
                )
                return io.NodeOutput(latent, images)
            if switch_step != AUTO_SWITCH:
                LOG.warning("ReHyAt Chunked Sampler: switch_step=%s is ignored without a low_noise_model",
                            switch_step)
            latent, images = run_chunked_ksampler(
                model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                order=order, state_device=state_device, vae=vae, node_id=_unique_id(cls),
                save_state=save_state, on_writer=attach,
            )
        return io.NodeOutput(latent, images)


class ReHyAtStreamingSampler(io.ComfyNode):
    """SAMPLER wrapping a ComfyUI sampler so SamplerCustom(Advanced) runs it chunk by chunk."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: the wrapped sampler's name, the order and the state device; output: SAMPLER."""
        return io.Schema(
            node_id="ReHyAtStreamingSampler",
            display_name="ReHyAt Streaming Sampler",
            category=CATEGORY,
            description=(
                "A SAMPLER for SamplerCustom / SamplerCustomAdvanced that runs any ComfyUI sampler chunk by "
                "chunk on a ReHyAt-patched Wan2.1 (keep your own noise, guider and sigmas nodes). Set the "
                "patch's forward_mode to recurrent so ComfyUI also sizes memory for one chunk."
            ),
            inputs=[
                io.Combo.Input("sampler_name", options=_SAMPLERS, tooltip=_SAMPLER_TIP),
                io.Combo.Input("order", options=list(ORDERS), default="streaming", tooltip=_ORDER_TIP),
                io.Combo.Input("state_device", options=list(STATE_DEVICES), default="auto",
                               tooltip=_STATE_TIP),
            ],
            outputs=[io.Sampler.Output(tooltip="connect to SamplerCustom / SamplerCustomAdvanced")],
            hidden=[io.Hidden.unique_id],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, sampler_name, order, state_device) -> io.NodeOutput:
        """Build the chunked SAMPLER (checks the sampler can run in this order)."""
        run = ChunkedRun(sampler_name, order, state_device, _unique_id(cls))
        return io.NodeOutput(chunked_sampler(run))


def _unique_id(cls: type[io.ComfyNode]) -> str | None:
    hidden = getattr(cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


NODES = [ReHyAtChunkedSampler, ReHyAtStreamingSampler]
