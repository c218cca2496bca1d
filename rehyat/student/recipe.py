"""The shipped ReHyAt student's recipe: budgets of stage 1 (φ distillation) and stage 2 (fine-tune).

One place for the defaults: :func:`rehyat.student.train.train_student`, ``python -m rehyat
train-student`` and the demo's ``--retrain`` all read :class:`StudentRecipe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..config import ConversionConfig, HybridAttentionConfig, require_int, require_real

STAGE2_TARGETS = ("teacher", "data")
STAGE2_DATA = ("clips", "trajectories")
STAGE2_FIRST_SEED = 7_000_000  # generator clips of stage 2 (apart from training 1e6+ and held-out 5e6+)


@dataclass(frozen=True)
class StudentRecipe:
    """Budgets and settings of the two-stage conversion of the embedded teacher.

    Attributes:
        chunk_frames, overlap_frames: Tc and To of the ReHyAt attention both stages train with (the
            paper's best: 3, 1).
        sampling_overlap_frames: the To the finished student samples with (None: ``overlap_frames``);
            its φ file records it, so the demo, the CLI and the pack's nodes all use it. φ and the
            LoRA do not depend on To, and a wider softmax window gives every chunk more exact
            context. Chosen on 24 validation pairs at 64 frames (seeds 6,000,000 on; continuity
            97.0 / 97.7 / 98.3 % at To = 1 / 2 / 3, each step's paired interval above 0) and
            confirmed on the 48 held-out ones: continuity 96.7 / 97.2 / 97.3 %, presence 99.0 /
            99.6 / 99.8 %, seam ratio 1.22 / 1.16 / 1.15 — for 50 % more softmax keys per chunk than
            To = 1 (Wan2.1-1.3B at 81 frames: 29 % of softmax's attention FLOPs instead of 21 %).
        stage1_steps: φ distillation steps (one captured teacher forward each).
        stage1_prompts: generator prompts the teacher is sampled on in stage 1 (scenes of the
            held-out evaluation pairs are excluded).
        stage1_trajectory_steps: denoising steps of each captured teacher trajectory.
        stage1_lr: AdamW learning rate of φ (the paper's 1e-3).
        phi_seed: seed of φ's initialisation.
        stage2_steps: flow-matching fine-tune steps (0: stage 1 only).
        stage2_batch: clips per fine-tune step.
        stage2_clips: generator clips (the teacher's own training distribution) fine-tuned on.
        stage2_frames: length of those clips (None: the teacher's training length). Longer clips
            train the recurrence over more chunks — the length the student is judged at.
        stage2_lr: AdamW learning rate of the LoRA adapters.
        stage2_warmup: linear warm-up steps.
        lora_rank: rank of the LoRA adapters on every linear of the transformer blocks.
        stage2_seed: seed of the data order, noise, σ and LoRA initialisation.
        empty_prompt_every: every n-th stage-2 clip has the empty prompt (keeps CFG's unconditional
            branch trained; 0: never).
        stage2_data: "trajectories" (shipped): the student's own guided sampling states, refreshed
            as it trains (:mod:`rehyat.student.onpolicy`; the target is then always the teacher's
            velocity) — measured at 64 frames: continuity 72.3 → 83 %, seam 1.75 → 1.56;
            "clips": noised generator clips (the teacher's training distribution; ≈ 3× faster).
        stage2_trajectory_prompts, stage2_trajectory_refresh: with "trajectories", the prompts of
            one buffer of trajectories and the steps between refreshes.
        stage2_target: "teacher": regress the softmax teacher's velocity on the noised clip (the
            same minimiser as flow matching, far less variance — measured: seam ratio 2.27 → 1.74
            at 64 frames); "data": the plain flow-matching target noise − x0.
        stage2_foreground_weight: extra loss weight on the pixels a shape covers (as the teacher's
            training, :func:`rehyat.teacher.train.content_weight`); 0: uniform.
    """

    chunk_frames: int = 3
    overlap_frames: int = 1
    stage1_steps: int = 800
    stage1_prompts: int = 24
    stage1_trajectory_steps: int = 10
    stage1_lr: float = 1e-3
    phi_seed: int = 0
    stage2_steps: int = 600
    stage2_batch: int = 4
    stage2_clips: int = 512
    stage2_frames: int | None = 48
    stage2_lr: float = 5e-4
    stage2_warmup: int = 20
    lora_rank: int = 8
    stage2_seed: int = 0
    empty_prompt_every: int = 10
    stage2_target: str = "teacher"
    stage2_foreground_weight: float = 4.0
    stage2_data: str = "trajectories"
    stage2_trajectory_prompts: int = 16
    stage2_trajectory_refresh: int = 25
    sampling_overlap_frames: int | None = 3

    def __post_init__(self) -> None:
        require_int("chunk_frames", self.chunk_frames, low=1, high=64)
        require_int("overlap_frames", self.overlap_frames, low=0, high=64)
        if self.sampling_overlap_frames is not None:
            require_int("sampling_overlap_frames", self.sampling_overlap_frames, low=0, high=64)
        require_int("stage1_steps", self.stage1_steps, low=1, high=1_000_000)
        require_int("stage1_prompts", self.stage1_prompts, low=2, high=10_000)
        require_int("stage1_trajectory_steps", self.stage1_trajectory_steps, low=1, high=1000)
        require_real("stage1_lr", self.stage1_lr, low=1e-8, high=1.0)
        require_int("phi_seed", self.phi_seed, low=0)
        require_int("stage2_steps", self.stage2_steps, low=0, high=1_000_000)
        require_int("stage2_batch", self.stage2_batch, low=1, high=4096)
        require_int("stage2_clips", self.stage2_clips, low=1, high=1_000_000)
        if self.stage2_frames is not None:
            require_int("stage2_frames", self.stage2_frames, low=1, high=1024)
        require_real("stage2_lr", self.stage2_lr, low=1e-8, high=1.0)
        require_int("stage2_warmup", self.stage2_warmup, low=0)
        require_int("lora_rank", self.lora_rank, low=1, high=1024)
        require_int("stage2_seed", self.stage2_seed, low=0)
        require_int("empty_prompt_every", self.empty_prompt_every, low=0)
        if self.stage2_target not in STAGE2_TARGETS:
            raise ValueError(f"stage2_target must be one of {STAGE2_TARGETS}; got {self.stage2_target!r}")
        require_real("stage2_foreground_weight", self.stage2_foreground_weight, low=0.0, high=100.0)
        if self.stage2_data not in STAGE2_DATA:
            raise ValueError(f"stage2_data must be one of {STAGE2_DATA}; got {self.stage2_data!r}")
        require_int("stage2_trajectory_prompts", self.stage2_trajectory_prompts, low=1, high=100_000)
        require_int("stage2_trajectory_refresh", self.stage2_trajectory_refresh, low=1, high=1_000_000)

    @property
    def conversion(self) -> ConversionConfig:
        """The conversion every block trains with (all blocks, causal)."""
        attention = HybridAttentionConfig(chunk_frames=self.chunk_frames, overlap_frames=self.overlap_frames)
        return ConversionConfig(attention=attention)

    @property
    def student_overlap_frames(self) -> int:
        """The To the finished student samples with (``sampling_overlap_frames`` or ``overlap_frames``)."""
        return self.overlap_frames if self.sampling_overlap_frames is None else self.sampling_overlap_frames

    def estimated_seconds(self, stage1_step: float = 0.2, stage2_step: float = 1.5) -> float:
        """A rough CPU time of both stages on one core of the CI machine (embedded teacher).

        Measured: ~0.2 s per stage-1 step; ~1.5 s per stage-2 step of 4 clips of 48 frames (×1.3
        with the teacher's velocity as the target: one more forward without gradients); on the
        student's trajectories, ~6 s per 48-frame trajectory of 20 guided steps on top.
        """
        frames = self.stage2_frames or 16
        stage2 = self.stage2_steps * stage2_step * (self.stage2_batch / 4) * (frames / 48)
        if self.stage2_target == "teacher" or self.stage2_data == "trajectories":
            stage2 *= 1.3
        if self.stage2_data == "trajectories":
            refreshes = -(-self.stage2_steps // self.stage2_trajectory_refresh)
            stage2 += refreshes * self.stage2_trajectory_prompts * 6.0 * (frames / 48)
        return self.stage1_steps * stage1_step + stage2

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class StudentContinuation:
    """Stage 2b: more on-policy stage-2 steps from a saved student (:mod:`rehyat.student.continuation`).

    The adapters start from the student's LoRA file (fp16, as shipped) and φ from its φ file; a fresh
    AdamW (the base recipe's learning rate and warm-up) trains the adapters on new generator prompts
    (after the ones the base run used), and ``seam_weight`` adds the boundary-step loss
    (:func:`rehyat.student.losses.boundary_step_loss`) to the teacher-velocity loss.

    Attributes:
        steps: fine-tune steps (each of the base recipe's ``stage2_batch`` states).
        seed: seed of the data order (a different seed from the base run's draws other states).
        seam_weight: weight of the boundary-step loss (0: the plain on-policy loss).
    """

    steps: int = 300
    seed: int = 1
    seam_weight: float = 2.0

    def __post_init__(self) -> None:
        require_int("continue_steps", self.steps, low=1, high=1_000_000)
        require_int("continue_seed", self.seed, low=0)
        require_real("seam_weight", self.seam_weight, low=0.0, high=100.0)

    def estimated_seconds(self, recipe: StudentRecipe) -> float:
        """A rough CPU time on one core: ``recipe``'s stage-2 cost per step, for ``steps`` steps."""
        with_steps = replace(recipe, stage2_steps=self.steps).estimated_seconds()
        return with_steps - replace(recipe, stage2_steps=0).estimated_seconds()

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


SHIPPED_CONTINUATION: StudentContinuation | None = StudentContinuation(steps=300, seed=1, seam_weight=2.0)
"""The stage 2b of the shipped student (None: the shipped student is stages 1 and 2 only).

Measured at 64 frames on the 12 held-out pairs: seam ratio 1.40 → 1.21 and continuity 91.2 → 93.7 %
against 300 more steps without the boundary-step loss (seed 1 too): 1.44 and 92.2 %."""
