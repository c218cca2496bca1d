"""Settings of stage-1 φ distillation, with the paper's defaults (one place for them).

Paper (§3.4.1, appendix 7.1): every converted block trains on its own, only φq / φk learn, AdamW,
batch size 1, learning rate 1e-3, loss ‖y − ŷ‖ between the teacher's and the student's attention
outputs; teacher trajectories from 50 denoising steps, guidance 5, Euler ancestral. The paper does
not state the number of distillation iterations; ``iterations`` defaults to 1000.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config import HybridAttentionConfig, require_int, require_real
from ..ops.layout import chunk_layout
from ..video_latent import video_frame_count
from .student import LOSSES


@dataclass(frozen=True)
class TeacherSampling:
    """How the softmax teacher is sampled to produce training data.

    Attributes:
        steps: denoising steps per trajectory (paper: 50).
        cfg: classifier-free guidance scale (paper: 5). Both the conditional and the unconditional
            evaluations are captured (they are real teacher forwards); cfg = 1 skips the latter.
        shift: flow-matching timestep shift of the sigma schedule (ComfyUI's Wan2.1 default: 8).
        eta: ancestral noise; 1 = Euler ancestral (paper), 0 = plain Euler.
        capture_stride: capture every k-th denoising step (1 = every step).
    """

    steps: int = 50
    cfg: float = 5.0
    shift: float = 8.0
    eta: float = 1.0
    capture_stride: int = 1

    def __post_init__(self) -> None:
        require_int("steps", self.steps, low=1, high=10_000)
        require_real("cfg", self.cfg, low=0.0, high=100.0)
        require_real("shift", self.shift, low=0.01, high=100.0)
        require_real("eta", self.eta, low=0.0, high=1.0)
        require_int("capture_stride", self.capture_stride, low=1, high=self.steps)

    def captured_steps(self) -> list[int]:
        """Denoising step indices whose teacher forwards are captured."""
        return list(range(0, self.steps, self.capture_stride))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class DistillOptions:
    """The optimisation and bookkeeping of a distillation run.

    Attributes:
        iterations: optimizer steps per block; one step per captured teacher forward.
        lr: AdamW learning rate (paper: 1e-3).
        weight_decay: AdamW weight decay (PyTorch's default 0.01; the paper does not state it).
        loss: ``"l2"`` — the paper's ‖y − ŷ‖ per batch item — or ``"mse"``.
        batch_size: trajectories sampled together per process (paper: 1). Under torchrun the global
            batch is ``batch_size × world size``.
        seed: trajectory k uses noise seed ``seed + k`` and prompt ``k mod P``.
        phi_seed: seed of φ's initialisation.
        eval_seed: first noise seed of the held-out trajectories (must not collide with training).
        eval_seeds: held-out seeds per evaluation prompt.
        holdout_prompts: prompts (from the end of the list) never trained on, only evaluated;
            None: 1 when there are ≥ 2 prompts, else 0 (evaluation then differs by seed only).
        checkpoint_every: write a checkpoint every N steps (and always at the end and on cancel).
        keep_checkpoints: checkpoints kept in the run folder.
        query_chunk_fraction: 1 = every block trains on all its queries. Below 1 (causal only) each
            block's step uses a random subset — ⌈fraction × eligible⌉ of the query chunks that have a
            linear part (the others give φ no gradient) — drawn from ``(seed, step, block)``, so the same
            on every rank and after a resume. It is a stochastic estimate of the full step's gradient
            (noisier; expect to need more steps) that saves the student's compute and the graph of the
            skipped chunks' queries and softmax windows (φk still runs on every key before the last
            selected chunk).
    """

    iterations: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.01
    loss: str = "l2"
    batch_size: int = 1
    seed: int = 0
    phi_seed: int = 0
    eval_seed: int = 1_000_000
    eval_seeds: int = 1
    holdout_prompts: int | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    query_chunk_fraction: float = 1.0

    def __post_init__(self) -> None:
        require_int("iterations", self.iterations, low=1)
        require_real("lr", self.lr, low=1e-12, high=1.0)
        require_real("weight_decay", self.weight_decay, low=0.0, high=1.0)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        require_int("batch_size", self.batch_size, low=1, high=1024)
        require_int("seed", self.seed, low=0)
        require_int("phi_seed", self.phi_seed, low=0)
        require_int("eval_seed", self.eval_seed, low=0)
        require_int("eval_seeds", self.eval_seeds, low=1, high=1000)
        if self.holdout_prompts is not None:
            require_int("holdout_prompts", self.holdout_prompts, low=0)
        require_int("checkpoint_every", self.checkpoint_every, low=1)
        require_int("keep_checkpoints", self.keep_checkpoints, low=1)
        require_real("query_chunk_fraction", self.query_chunk_fraction, low=1e-6, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def min_latent_frames(attention: HybridAttentionConfig) -> int:
    """Fewest latent frames for which some query chunk has a non-empty linear set (φ gets a gradient).

    Causal: a chunk's linear set is frames ``[0, t·Tc − To)``; non-causal: every frame outside its
    softmax window. For Tc=3, To=1 this is 4 = Tc + To latent frames (13 video frames).
    """
    for frames in range(1, 100_000):
        for chunk in chunk_layout(frames, attention.chunk_frames, attention.overlap_frames):
            outside = chunk.window_start > 0 or (not attention.causal and chunk.window_end < frames)
            if outside:
                return frames
    raise ValueError("no clip length exercises the linear part")  # unreachable for valid configs


def check_clip_length(
    latent_frames: int, attention: HybridAttentionConfig, parameter: str = "length"
) -> None:
    """Refuse clips whose every query chunk is pure softmax (φ would get no gradient)."""
    minimum = min_latent_frames(attention)
    if latent_frames < minimum:
        video = video_frame_count(minimum)
        raise ValueError(
            f"{parameter}: a clip of {latent_frames} latent frames is too short to exercise the linear "
            f"attention with chunk_frames={attention.chunk_frames}, overlap_frames={attention.overlap_frames}"
            f"{'' if attention.causal else ' (non-causal)'}: every query chunk would be pure softmax and φ "
            f"would learn nothing. Use at least {minimum} latent frames ({video} video frames)."
        )


def check_distillable(attention: HybridAttentionConfig, options: DistillOptions) -> None:
    """Refuse settings distillation cannot train: a conversion without φ, or query-chunk sampling
    where the chunks do not separate a causal linear part."""
    if options.query_chunk_fraction < 1 and not attention.causal:
        raise ValueError("query_chunk_fraction < 1 needs causal blocks; use 1 for non-causal ones")
    if not attention.uses_phi:
        raise ValueError(
            f"the {attention.baseline!r} baseline has no φ to distil: convert without distillation, or "
            "choose another attention"
        )
    if options.query_chunk_fraction < 1 and attention.baseline is not None:
        raise ValueError(
            f"query_chunk_fraction < 1 needs ReHyAt attention; use 1 for the {attention.baseline!r} baseline"
        )
