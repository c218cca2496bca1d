"""Node: stage-1 φ distillation of a ComfyUI Wan2.1 model (online, resumable, cancel = checkpoint)."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from ..rehyat.integrations.comfyui_capture import ComfyWanTeacher
from ..rehyat.training.distill import DistillCancelled, Distiller, run_distillation, run_identity
from ..rehyat.training.options import DistillOptions, TeacherSampling
from ..rehyat.training.report import format_report
from ..rehyat.training.runs import RunFolder, tensors_digest, validate_run_name
from ..rehyat.video_latent import video_latent_shape
from ..rehyat.weights import load_phi_weights
from .conversion_widgets import causal_input, chunk_frames_input, overlap_frames_input, placement_input
from .patch import PHI_TYPE, model_fingerprint
from .training_common import (
    autograd_enabled,
    checkpoint_every_input,
    interrupted,
    loss_curve_output,
    loss_curve_tensor,
    progress_callback,
    run_name_input,
    runs_root,
    seed_input,
    should_stop,
)

_SAMPLING = TeacherSampling()
_OPTIONS = DistillOptions()
_ATTENTION = HybridAttentionConfig()
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
                io.Model.Input(
                    "model", tooltip="the ORIGINAL Wan2.1 model (softmax attention, not ReHyAt-patched)"
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="umT5 text encoder used to encode 'prompts' and 'negative_prompt'",
                ),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default="",
                    tooltip="training prompts, one per line (empty lines ignored); the last "
                    "'holdout_prompts' lines are only used for the held-out report",
                ),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default="",
                    tooltip="negative prompt for classifier-free guidance (encoded with clip)",
                ),
                io.Conditioning.Input(
                    "positive",
                    optional=True,
                    tooltip="extra training prompt as a CONDITIONING (e.g. Load Conditioning); "
                    "appended after the text prompts",
                ),
                io.Conditioning.Input(
                    "negative",
                    optional=True,
                    tooltip="negative CONDITIONING; used instead of negative_prompt when connected",
                ),
                io.Int.Input(
                    "width",
                    default=480,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="video width in pixels of the teacher's trajectories (paper ablations: 480)",
                ),
                io.Int.Input(
                    "height",
                    default=320,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="video height in pixels (paper ablations: 320)",
                ),
                io.Int.Input(
                    "length",
                    default=81,
                    min=1,
                    max=1024,
                    step=4,
                    tooltip="video frames (latent frames = (length-1)/4 + 1); must be long enough "
                    "for the linear attention to be used, or the node says the minimum",
                ),
                io.Int.Input(
                    "steps",
                    default=_SAMPLING.steps,
                    min=1,
                    max=1000,
                    tooltip="denoising steps per teacher trajectory (paper: 50)",
                ),
                io.Float.Input(
                    "cfg",
                    default=_SAMPLING.cfg,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="guidance scale of the teacher (paper: 5); both cond and uncond "
                    "forwards are training data",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=list(samplers),
                    default="euler_ancestral",
                    tooltip="ComfyUI sampler of the teacher (paper: Euler ancestral)",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(schedulers),
                    default="simple",
                    tooltip="ComfyUI scheduler of the teacher",
                ),
                io.Int.Input(
                    "capture_stride",
                    default=1,
                    min=1,
                    max=1000,
                    tooltip="train on every k-th denoising step (1 = all steps)",
                ),
                seed_input("training trajectory k uses noise seed seed+k"),
                io.Int.Input(
                    "iterations",
                    default=_OPTIONS.iterations,
                    min=1,
                    max=10_000_000,
                    tooltip="optimizer steps per block (one per captured teacher forward)",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=_OPTIONS.lr,
                    min=1e-7,
                    max=1.0,
                    step=1e-4,
                    tooltip="AdamW learning rate of φ (paper: 1e-3)",
                ),
                io.Int.Input(
                    "holdout_prompts",
                    default=1,
                    min=0,
                    max=1000,
                    tooltip="prompts (from the end of the list) never trained on, only evaluated; "
                    "clamped so one prompt always remains for training",
                ),
                io.Int.Input(
                    "num_blocks",
                    default=30,
                    min=1,
                    max=1000,
                    tooltip="blocks to convert and distil (clamped to the model's block count)",
                ),
                placement_input(),
                chunk_frames_input(),
                overlap_frames_input(),
                causal_input(),
                io.Int.Input(
                    "phi_hidden_dim",
                    default=_PHI.hidden_dim,
                    min=1,
                    max=4096,
                    tooltip="φ MLP hidden width per head (paper default 256)",
                ),
                io.Int.Input(
                    "phi_feature_dim",
                    default=_PHI.feature_dim,
                    min=2,
                    max=4096,
                    step=2,
                    tooltip="φ output width per head (multiple of the degree, 2)",
                ),
                run_name_input(
                    "wan_phi_distill",
                    "run folder output/rehyat_runs/<run_name>: same name resumes; a run "
                    "made for another model or settings is refused",
                ),
                checkpoint_every_input(
                    _OPTIONS.checkpoint_every,
                    "write a checkpoint every N steps (also at the end and on Cancel)",
                ),
                io.Float.Input(
                    "query_chunk_fraction",
                    default=_OPTIONS.query_chunk_fraction,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="1 = train on every query; below 1 each step trains on a random fraction of the "
                    "query chunks (less compute and memory per step, noisier gradient; causal only)",
                ),
            ],
            outputs=[
                PHI_TYPE.Output(display_name="phi", tooltip="the distilled φ (connect to Patch / Save φ)"),
                loss_curve_output("loss per step"),
                io.String.Output(display_name="report", tooltip="held-out errors before/after, per block"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        prompts,
        negative_prompt,
        width,
        height,
        length,
        steps,
        cfg,
        sampler_name,
        scheduler,
        capture_stride,
        seed,
        iterations,
        learning_rate,
        holdout_prompts,
        num_blocks,
        placement,
        chunk_frames,
        overlap_frames,
        causal,
        phi_hidden_dim,
        phi_feature_dim,
        run_name,
        checkpoint_every,
        query_chunk_fraction,
        clip=None,
        positive=None,
        negative=None,
    ) -> io.NodeOutput:
        """Run (or resume) the distillation; see the node description."""
        import comfy.model_management

        validate_run_name(run_name)
        conditionings, negative_cond = _conditionings(clip, prompts, negative_prompt, positive, negative)
        wan = model.get_model_object("diffusion_model")
        total = len(wan.blocks)
        conversion = ConversionConfig(
            num_blocks=min(num_blocks, total),
            placement=placement,
            attention=HybridAttentionConfig(
                chunk_frames=chunk_frames,
                overlap_frames=overlap_frames,
                causal=causal,
                feature_map=FeatureMapConfig(hidden_dim=phi_hidden_dim, feature_dim=phi_feature_dim),
            ),
        )
        options = DistillOptions(
            iterations=iterations,
            lr=learning_rate,
            seed=seed,
            checkpoint_every=checkpoint_every,
            holdout_prompts=min(holdout_prompts, len(conditionings) - 1),
            query_chunk_fraction=query_chunk_fraction,
        )
        channels = model.get_model_object("latent_format").latent_channels
        latent_shape = video_latent_shape(length, height, width, channels, exact=False)
        sample_fn = _sampler(conditionings, negative_cond, latent_shape, steps, cfg, sampler_name, scheduler)
        digest = tensors_digest([c[0][0] for c in conditionings] + [negative_cond[0][0]])
        teacher = ComfyWanTeacher(
            model,
            sample_fn,
            latent_shape,
            steps,
            capture_stride,
            describe_extra={
                "cfg": cfg,
                "sampler": sampler_name,
                "scheduler": scheduler,
                "conditioning_sha256": digest,
            },
            fingerprint=model_fingerprint(model),
        )
        progress = progress_callback(iterations)
        with autograd_enabled():  # φ need autograd
            distiller = Distiller(
                teacher,
                conversion,
                options,
                len(conditionings),
                device=comfy.model_management.get_torch_device(),
                on_step=progress,
                should_stop=should_stop,
            )
            identity = run_identity(distiller)
            distiller.run = RunFolder(runs_root(), run_name, identity, keep_last=options.keep_checkpoints)
            try:
                result = run_distillation(distiller, phi_path=distiller.run.path / "phi.safetensors")
            except DistillCancelled:
                raise interrupted() from None
        phi = load_phi_weights(result.phi_path)
        image = loss_curve_tensor(result.curves, ylabel="loss")
        text = (
            format_report(result.report)
            + f"\nrun folder: {distiller.run.path}\n\n"
            + json.dumps(result.report["held_out"]["blocks"], indent=1)
        )
        return io.NodeOutput(phi, image, text)


def _conditionings(clip, prompts: str, negative_prompt: str, positive, negative) -> tuple[list, list]:
    """Training CONDITIONINGs (one per prompt line, then ``positive``) and the negative one."""
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if lines and clip is None:
        raise ValueError(
            "clip: connect the umT5 text encoder (CLIP input) to encode 'prompts', "
            "or clear 'prompts' and connect a 'positive' conditioning"
        )
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(line)) for line in lines]
    if positive is not None:
        conds.append(positive)
    if not conds:
        raise ValueError(
            "prompts: the prompt list is empty — write at least one prompt (one per line) "
            "or connect a 'positive' conditioning"
        )
    if negative is not None:
        neg = negative
    elif clip is not None:
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(negative_prompt))
    else:
        raise ValueError("negative: connect a 'negative' conditioning, or a CLIP to encode 'negative_prompt'")
    return conds, neg


def _sampler(conditionings, negative, latent_shape, steps, cfg, sampler_name, scheduler):
    """A ``sample_fn`` for :class:`ComfyWanTeacher`: one trajectory through ``comfy.sample.sample``."""
    import comfy.sample

    def sample(patcher, trajectory, on_step):
        latent = torch.zeros((1, *latent_shape), dtype=torch.float32)
        noise = comfy.sample.prepare_noise(latent, trajectory.seed)
        return comfy.sample.sample(
            patcher,
            noise,
            steps,
            cfg,
            sampler_name,
            scheduler,
            conditionings[trajectory.conditioning],
            negative,
            latent,
            denoise=1.0,
            callback=lambda step, x0, x, total: on_step(step),
            disable_pbar=True,
            seed=trajectory.seed,
        )

    return sample


NODES = [ReHyAtDistill]
