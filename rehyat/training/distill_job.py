"""Stage 1 as one job: distil φ against a teacher, in a run folder, into a new φ file.

Both fronts run this: ``python -m rehyat distill`` (:mod:`rehyat.commands.distill`, the
pure-PyTorch teacher, ``torchrun`` for several processes) and the ReHyAt Distill φ node (ComfyUI's
own model and samplers). Each builds the teacher its way, fills :class:`DistillInputs` and presents
:class:`DistillOutputs`; everything between lives here and in :mod:`rehyat.training.distill`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import create_numbered
from ..config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from .distill import Distiller, DistillResult, Teacher, run_distillation, run_identity
from .distributed import DistributedContext
from .job import TrainingHooks, open_run_folder
from .options import DistillOptions
from .runs import validate_run_name

PHI_FILE = "phi.safetensors"
"""The φ file a run writes into its own folder when no output is given (then ``phi_00001_…``)."""


def conversion_for(
    *,
    num_blocks: int | None,
    placement: str,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool,
    phi_hidden_dim: int,
    phi_feature_dim: int,
    blocks: tuple[int, ...] | None = None,
) -> ConversionConfig:
    """The conversion a distillation front's settings describe (flags or widgets of the same names)."""
    return ConversionConfig(
        num_blocks=num_blocks,
        placement=placement,
        blocks=blocks,
        attention=HybridAttentionConfig(
            chunk_frames=chunk_frames,
            overlap_frames=overlap_frames,
            causal=causal,
            feature_map=FeatureMapConfig(hidden_dim=phi_hidden_dim, feature_dim=phi_feature_dim),
        ),
    )


@dataclass(frozen=True)
class DistillInputs:
    """What a distillation run needs besides its teacher.

    Attributes:
        conversion: blocks, Tc, To, causal and φ shape.
        options: optimisation, seeds, held-out split and checkpointing.
        runs_dir: the folder holding run folders; the run lives in ``runs_dir/run_name``.
        run_name: the run's folder name (the same name resumes).
        output: the φ file to create; None: ``<run>/phi.safetensors`` (numbered when taken).
    """

    conversion: ConversionConfig
    options: DistillOptions
    runs_dir: str | os.PathLike[str]
    run_name: str
    output: Path | None = None

    def __post_init__(self) -> None:
        validate_run_name(self.run_name)


@dataclass(frozen=True)
class DistillOutputs:
    """What a finished run produced: the result (φ modules, report, curves), the φ file written
    (None on other processes than the main one) and the run folder."""

    result: DistillResult
    phi_path: Path | None
    run_path: Path


class DistillJob:
    """One distillation run: the :class:`Distiller`, its run folder and its φ file.

    Args:
        inputs: the run's settings.
        teacher: the softmax model and its sampler (see :class:`~rehyat.training.distill.Teacher`).
        num_prompts: prompts the teacher can be conditioned on.
        ctx: data-parallel context (one process by default).
        device: where φ live (the teacher's compute device).
        hooks: progress and Cancel; Cancel raises :class:`~rehyat.training.distill.DistillCancelled`
            after writing a checkpoint to resume from.
    """

    def __init__(
        self,
        inputs: DistillInputs,
        teacher: Teacher,
        num_prompts: int,
        *,
        ctx: DistributedContext | None = None,
        device: torch.device | str = "cpu",
        hooks: TrainingHooks | None = None,
    ):
        self.inputs = inputs
        self.ctx = ctx or DistributedContext()
        hooks = hooks or TrainingHooks()
        self.distiller = Distiller(
            teacher,
            inputs.conversion,
            inputs.options,
            num_prompts,
            ctx=self.ctx,
            device=device,
            on_step=hooks.on_step,
            should_stop=hooks.should_stop,
        )

    def open_run(self) -> Path:
        """Bind (create or resume) the run folder; refuses a folder made for other settings."""
        if self.distiller.run is None:
            self.distiller.run = open_run_folder(
                self.inputs.runs_dir,
                self.inputs.run_name,
                run_identity(self.distiller),
                self.ctx,
                keep_last=self.inputs.options.keep_checkpoints,
            )
        return self.distiller.run.path

    def run(self) -> DistillOutputs:
        """Train (resuming the run folder's last checkpoint), evaluate, write the report and the φ."""
        run_path = self.open_run()
        result = run_distillation(self.distiller)
        phi_path = self.write_phi(result) if self.ctx.is_main else None
        return DistillOutputs(result, phi_path, run_path)

    def write_phi(self, result: DistillResult) -> Path:
        """Write the trained φ as a new file: ``inputs.output``, or ``<run>/phi.safetensors``
        (``phi_00001_…`` when a previous run of the folder left one). Nothing is ever overwritten."""
        distiller, output = self.distiller, self.inputs.output
        if output is None:
            run = distiller.run.path
            return create_numbered(
                lambda n: run / (PHI_FILE if n == 0 else f"phi_{n:05}_.safetensors"),
                lambda path: distiller.save_phi(path, result.report),
                first=0,
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            return distiller.save_phi(output, result.report)
        except FileExistsError:
            raise ValueError(
                f"--output {output} was created by something else while distilling; it is kept and the φ "
                f"were not written — run the same command with another --output (it resumes from the "
                f"run folder {distiller.run.path} without training again)"
            ) from None
