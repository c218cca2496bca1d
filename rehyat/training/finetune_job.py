"""Stage 2 as one job: flow-matching fine-tune in a run folder, then the output files as a group.

Both fronts run this: ``python -m rehyat finetune`` (:mod:`rehyat.commands.finetune`, the
pure-PyTorch WanDiT, ``torchrun`` for several processes) and the ReHyAt Finetune node (a ComfyUI
model, trained on a working clone: :mod:`nodes.training_comfy`). Each front loads its model, fills
:class:`FinetuneInputs`, names the files it wants (:class:`~rehyat.training.job.OutputFile`) and
presents :class:`FinetuneOutputs`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .dataset import LatentDataset
from .distributed import DistributedContext
from .finetune import FinetuneConfig, FinetuneResult, evaluation_loss, finetune
from .flow_matching import ModelFn
from .job import OutputFile, TrainingHooks, open_run_folder, write_output_group
from .runs import RunFolder, validate_run_name
from .trainable import Trainable


@dataclass(frozen=True)
class FinetuneInputs:
    """What a fine-tune run needs besides its model and data.

    Attributes:
        config: optimisation, trainable set, precision and checkpointing.
        runs_dir: the folder holding run folders; the run lives in ``runs_dir/run_name``.
        run_name: the run's folder name (the same name resumes).
        identity: what the run folder is bound to (the model, φ, dataset and ``config.identity()``);
            a folder made for another identity is refused.
    """

    config: FinetuneConfig
    runs_dir: str | os.PathLike[str]
    run_name: str
    identity: Mapping[str, Any]

    def __post_init__(self) -> None:
        validate_run_name(self.run_name)


@dataclass
class FinetuneOutputs:
    """What the run did: the :class:`FinetuneResult`, its run folder, and the loss on fixed noise
    before and after (None unless measured)."""

    result: FinetuneResult
    run: RunFolder
    loss_before: float | None = None
    loss_after: float | None = None


class FinetuneJob:
    """One fine-tune run of ``model`` (through ``model_fn``) on ``dataset``.

    Args:
        inputs: the run's settings.
        model: the module holding every parameter (φ inside its tree).
        model_fn: ``model_fn(x_t, t, context) -> v`` running ``model`` with its patches.
        dataset: the samples.
        trainable: an already selected set (default: the config's).
        ctx: data-parallel context (one process by default).
        hooks: progress and Cancel (a cancelled run checkpoints and returns ``result.cancelled``).
        measure_loss_on: a device: measure the loss on fixed noise before and after training there.
    """

    def __init__(
        self,
        inputs: FinetuneInputs,
        model: nn.Module,
        model_fn: ModelFn,
        dataset: LatentDataset,
        *,
        trainable: Trainable | None = None,
        ctx: DistributedContext | None = None,
        hooks: TrainingHooks | None = None,
        measure_loss_on: torch.device | None = None,
    ):
        self.inputs, self.model, self.model_fn, self.dataset = inputs, model, model_fn, dataset
        self.trainable = trainable
        self.ctx = ctx or DistributedContext()
        self.hooks = hooks or TrainingHooks()
        self.measure_loss_on = measure_loss_on

    def run(self) -> FinetuneOutputs:
        """Bind the run folder, train (resuming its last checkpoint), measure the loss if asked."""
        run = open_run_folder(self.inputs.runs_dir, self.inputs.run_name, self.inputs.identity, self.ctx)
        before = self._loss()
        result = finetune(
            self.model,
            self.model_fn,
            self.dataset,
            self.inputs.config,
            run=run,
            ctx=self.ctx,
            trainable=self.trainable,
            progress=self.hooks.on_step,
            should_stop=self.hooks.should_stop,
        )
        after = None if result.cancelled else self._loss()
        return FinetuneOutputs(result, run, before, after)

    def record(self, result: FinetuneResult, **extra: Any) -> dict[str, Any]:
        """The training record stored in the output files and the report (``extra`` appended)."""
        config = self.inputs.config
        return {
            "stage": "finetune",
            "steps": result.step,
            "learning_rate": config.learning_rate,
            "trainable": config.trainable,
            "batch_size": config.batch_size,
            "seed": config.seed,
            **extra,
            "resumed_from": result.resumed_from,
        }

    @staticmethod
    def write_outputs(result: FinetuneResult, stem: str, files: Sequence[OutputFile]) -> dict[str, str]:
        """Write ``files`` as new files ``<stem>_s<step>…`` sharing one free stem (never overwriting)."""
        return write_output_group(f"{stem}_s{result.step}", files)

    def _loss(self) -> float | None:
        if self.measure_loss_on is None:
            return None
        config = self.inputs.config
        return evaluation_loss(self.model_fn, self.dataset, flow=config.flow, device=self.measure_loss_on)
