"""Node: stage-1 φ distillation of a ComfyUI Wan2.1 model (online, resumable, cancel = checkpoint)."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..rehyat.config import FeatureMapConfig
from ..rehyat.training.distill import DistillCancelled
from ..rehyat.training.distill_job import DistillInputs, DistillJob, conversion_for
from ..rehyat.training.options import DistillOptions, TeacherSampling
from ..rehyat.training.report import format_report
from ..rehyat.training.runs import validate_run_name
from ..rehyat.video_latent import video_latent_shape
from ..rehyat.weights import load_phi_weights
from .conversion_widgets import causal_input, chunk_frames_input, overlap_frames_input, placement_input
from .patch import PHI_TYPE
from .training_comfy import (
    autograd_enabled,
    comfy_teacher,
    compute_device,
    distill_conditionings,
    interrupted,
    loss_curve_tensor,
    runs_root,
    training_hooks,
)
from .training_common import checkpoint_every_input, loss_curve_output, run_name_input, seed_input

_SAMPLING = TeacherSampling()
_OPTIONS = DistillOptions()
_PHI = FeatureMapConfig()


class ReHyAtDistill(io.ComfyNode):
    """Distil φ of a Wan2.1 model's blocks against its own softmax attention (paper §3.4.1)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Model, prompts, sampling, optimisation and conversion settings → φ, loss curve, report."""
        import comfy.samplers

        samplers = comfy.samplers.KSampler.SAMPLERS
        schedulers = comfy.samplers.KSampler.SCHEDULERS
        return io.Schema(
            node_id="ReHyAtDistill",
            display_name="ReHyAt Distill φ",
            category="ReHyAt/training",
            is_experimental=True,
            description=(
                "Stage 1 of ReHyAt training: samples the ORIGINAL Wan over your prompts and seeds, and at "
                "every captured denoising step trains each converted block's φ to reproduce that block's "
                "softmax attention output (AdamW, one step per teacher forward, blocks independent). No "
                "videos needed. The run folder output/rehyat_runs/<run_name> keeps checkpoints: Cancel "
                "writes one, and queueing the same run name again resumes (a larger 'iterations' extends "
                "the run). Outputs the trained φ, its loss curve and a held-out report (relative L2 and "
                "cosine of each block's attention output before/after, on a held-out prompt and seeds)."
            ),
            inputs=[
                io.Model.Input("model",
                               tooltip="the ORIGINAL Wan2.1 model (softmax attention, not ReHyAt-patched)"),
                io.Clip.Input("clip", optional=True,
                              tooltip="umT5 text encoder used to encode 'prompts' and 'negative_prompt'"),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="training prompts, one per line (empty lines ignored); the last "
                                        "'holdout_prompts' lines are only used for the held-out report"),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="negative prompt for classifier-free guidance (encoded with clip)"),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="extra training prompt as a CONDITIONING (e.g. Load "
                                              "Conditioning); appended after the text prompts"),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="negative CONDITIONING; used instead of negative_prompt when "
                                              "connected"),
                io.Int.Input("width", default=480, min=16, max=4096, step=16,
                             tooltip="video width in pixels of the teacher's trajectories (paper "
                                     "ablations: 480)"),
                io.Int.Input("height", default=320, min=16, max=4096, step=16,
                             tooltip="video height in pixels (paper ablations: 320)"),
                io.Int.Input("length", default=81, min=1, max=1024, step=4,
                             tooltip="video frames (latent frames = (length-1)/4 + 1); must be long enough "
                                     "for the linear attention to be used, or the node says the minimum"),
                io.Int.Input("steps", default=_SAMPLING.steps, min=1, max=1000,
                             tooltip="denoising steps per teacher trajectory (paper: 50)"),
                io.Float.Input("cfg", default=_SAMPLING.cfg, min=0.0, max=100.0, step=0.1,
                               tooltip="guidance scale of the teacher (paper: 5); both cond and uncond "
                                       "forwards are training data"),
                io.Combo.Input("sampler_name", options=list(samplers), default="euler_ancestral",
                               tooltip="ComfyUI sampler of the teacher (paper: Euler ancestral)"),
                io.Combo.Input("scheduler", options=list(schedulers), default="simple",
                               tooltip="ComfyUI scheduler of the teacher"),
                io.Int.Input("capture_stride", default=1, min=1, max=1000,
                             tooltip="train on every k-th denoising step (1 = all steps)"),
                seed_input("training trajectory k uses noise seed seed+k"),
                io.Int.Input("iterations", default=_OPTIONS.iterations, min=1, max=10_000_000,
                             tooltip="optimizer steps per block (one per captured teacher forward)"),
                io.Float.Input("learning_rate", default=_OPTIONS.lr, min=1e-7, max=1.0, step=1e-4,
                               tooltip="AdamW learning rate of φ (paper: 1e-3)"),
                io.Int.Input("holdout_prompts", default=1, min=0, max=1000,
                             tooltip="prompts (from the end of the list) never trained on, only evaluated; "
                                     "clamped so one prompt always remains for training"),
                io.Int.Input("num_blocks", default=30, min=1, max=1000,
                             tooltip="blocks to convert and distil (clamped to the model's block count)"),
                placement_input(),
                chunk_frames_input(),
                overlap_frames_input(),
                causal_input(),
                io.Int.Input("phi_hidden_dim", default=_PHI.hidden_dim, min=1, max=4096,
                             tooltip="φ MLP hidden width per head (paper default 256)"),
                io.Int.Input("phi_feature_dim", default=_PHI.feature_dim, min=2, max=4096, step=2,
                             tooltip="φ output width per head (multiple of the degree, 2)"),
                run_name_input("wan_phi_distill",
                               "run folder output/rehyat_runs/<run_name>: same name resumes; a run made "
                               "for another model or settings is refused"),
                checkpoint_every_input(_OPTIONS.checkpoint_every,
                                       "write a checkpoint every N steps (also at the end and on Cancel)"),
                io.Float.Input("query_chunk_fraction", default=_OPTIONS.query_chunk_fraction, min=0.01,
                               max=1.0, step=0.01,
                               tooltip="1 = train on every query; below 1 each step trains on a random "
                                       "fraction of the query chunks (less compute and memory per step, "
                                       "noisier gradient; causal only)"),
            ],
            outputs=[
                PHI_TYPE.Output(display_name="phi", tooltip="the distilled φ (connect to Patch / Save φ)"),
                loss_curve_output("loss per step"),
                io.String.Output(display_name="report", tooltip="held-out errors before/after, per block"),
            ],
        )

    @classmethod
    def execute(cls, model, prompts, negative_prompt, width, height, length, steps, cfg, sampler_name,
                scheduler, capture_stride, seed, iterations, learning_rate, holdout_prompts, num_blocks,
                placement, chunk_frames, overlap_frames, causal, phi_hidden_dim, phi_feature_dim, run_name,
                checkpoint_every, query_chunk_fraction, clip=None, positive=None,
                negative=None) -> io.NodeOutput:
        """Run (or resume) the distillation; see the node description."""
        validate_run_name(run_name)
        conditionings, negative_cond = distill_conditionings(
            clip, prompts, negative_prompt, positive, negative
        )
        wan = model.get_model_object("diffusion_model")
        total = len(wan.blocks)
        inputs = DistillInputs(
            conversion=conversion_for(
                num_blocks=min(num_blocks, total),
                placement=placement,
                chunk_frames=chunk_frames,
                overlap_frames=overlap_frames,
                causal=causal,
                phi_hidden_dim=phi_hidden_dim,
                phi_feature_dim=phi_feature_dim,
            ),
            options=DistillOptions(
                iterations=iterations,
                lr=learning_rate,
                seed=seed,
                checkpoint_every=checkpoint_every,
                holdout_prompts=min(holdout_prompts, len(conditionings) - 1),
                query_chunk_fraction=query_chunk_fraction,
            ),
            runs_dir=runs_root(),
            run_name=run_name,
        )
        channels = model.get_model_object("latent_format").latent_channels
        latent_shape = video_latent_shape(length, height, width, channels, exact=False)
        teacher = comfy_teacher(model, conditionings, negative_cond, latent_shape, steps=steps, cfg=cfg,
                                sampler_name=sampler_name, scheduler=scheduler, capture_stride=capture_stride)
        with autograd_enabled():  # φ need autograd
            job = DistillJob(inputs, teacher, len(conditionings), device=compute_device(),
                             hooks=training_hooks(iterations))
            try:
                outputs = job.run()
            except DistillCancelled:
                raise interrupted() from None
        phi = load_phi_weights(outputs.phi_path)
        report = outputs.result.report
        image = loss_curve_tensor(outputs.result.curves, ylabel="loss")
        text = (
            format_report(report)
            + f"\nrun folder: {outputs.run_path}\n\n"
            + json.dumps(report["held_out"]["blocks"], indent=1)
        )
        return io.NodeOutput(phi, image, text)


NODES = [ReHyAtDistill]
