"""Node: ReHyAt Extend Clip — continue a finished chunked clip later, exactly. Thin: inputs →
``sampling_extend`` → outputs."""

from __future__ import annotations

from comfy_api.latest import io

from .sampling_extend import MAX_EXTRA_FRAMES, run_extend_clip
from .sampling_video import DEFAULT_FPS, VIDEO_INPUTS, growing_video

CATEGORY = "ReHyAt/sampling"
SAVE_STATE_TIP = (
    "write the recurrent states after the last chunk to output/rehyat_states/ReHyAt_clip_NNNNN_.safetensors "
    "(size ≈ the state store: steps × evaluations × (cond + uncond) × batch × blocks × (|S| + |z| + overlap "
    "K/V), e.g. 1.25 GiB for Wan2.1-1.3B 480×832 at 4 steps cfg 1; logged before sampling, refused when the "
    "disk lacks room) so ReHyAt Extend Clip can continue the clip exactly; the starting noise is then drawn "
    "per latent frame (differs from KSampler's for the same seed). Needs order=streaming and whole chunks"
)

_VAE_TIP = ("Wan2.1 VAE: decode the new chunks as they land (the VAE's causal cache is rebuilt first by "
            "decoding the earlier latent; nothing of it is kept)")
_LATENT_TIP = "the whole clip (old and new frames; rehyat_resume with save_state)"


class ReHyAtExtendClip(io.ComfyNode):
    """Continue a clip sampled with save_state: more chunks, same settings, same numbers as one longer run."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: model, prompts, the saved LATENT, extra_frames, optional VAE / save_state / video."""
        return io.Schema(
            node_id="ReHyAtExtendClip",
            display_name="ReHyAt Extend Clip",
            category=CATEGORY,
            description=(
                "Extends a clip made by the ReHyAt Chunked Sampler with save_state on: runs extra_frames "
                "more latent frames from the saved recurrent states with the saved sampler, scheduler, "
                "steps, cfg, denoise and seed — bit for bit what one longer run would have given. The "
                "prompt may change: the new frames continue from what the old prompt left. Refuses another "
                "model, φ or latent."
            ),
            inputs=[
                io.Model.Input("model", tooltip="the patched model the clip was sampled with (same "
                                                "checkpoint, same φ, same chunk_frames / overlap_frames)"),
                io.Conditioning.Input("positive", tooltip="the prompt of the new frames (a ReHyAt Prompt "
                                                          "Schedule works too; its start frames count from "
                                                          "the clip's first frame)"),
                io.Conditioning.Input("negative", tooltip="the prompt to steer away from"),
                io.Latent.Input("latent", tooltip="the LATENT of a Chunked Sampler / Extend Clip run with "
                                                  "save_state on (it carries rehyat_resume)"),
                io.Int.Input("extra_frames", default=3, min=1, max=MAX_EXTRA_FRAMES,
                             tooltip="latent frames to add (4 video frames each); a multiple of the patch's "
                                     "chunk_frames to extend again later"),
                io.Vae.Input("vae", optional=True,
                             tooltip=_VAE_TIP),
                io.Boolean.Input("save_state", default=False, optional=True, tooltip=SAVE_STATE_TIP),
                *VIDEO_INPUTS,
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip=_LATENT_TIP),
                io.Image.Output(display_name="IMAGE", tooltip="the new frames decoded (empty without a VAE)"),
            ],
            hidden=[io.Hidden.unique_id],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, extra_frames, vae=None, save_state=False,
                video_prefix="", fps=DEFAULT_FPS) -> io.NodeOutput:
        """Sample ``extra_frames`` more latent frames continuing ``latent``'s saved states."""
        hidden = getattr(cls, "hidden", None)
        node_id = getattr(hidden, "unique_id", None) if hidden is not None else None
        with growing_video(video_prefix, fps, vae) as attach:
            out, images = run_extend_clip(model, positive, negative, latent, extra_frames, vae=vae,
                                          save_state=save_state, node_id=node_id, on_writer=attach)
        return io.NodeOutput(out, images)


NODES = [ReHyAtExtendClip]
