"""What every training job shares, whichever front (command line or ComfyUI node) runs it.

A job (:class:`~rehyat.training.distill_job.DistillJob`,
:class:`~rehyat.training.finetune_job.FinetuneJob`) takes its inputs as a dataclass, binds a run
folder (resume), reports progress and polls for Cancel through :class:`TrainingHooks`, and writes
its outputs as new files (:func:`write_output_group`). The fronts only translate their inputs and
present the outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import create_file_group
from .distributed import DistributedContext
from .runs import RunFolder

ProgressHook = Callable[[int, int, float], None]
"""``(step, total_steps, loss)`` after every optimiser step (progress bars)."""


@dataclass(frozen=True)
class TrainingHooks:
    """How a front follows and stops a job.

    Attributes:
        on_step: called after every step with ``(step, total_steps, loss)``.
        should_stop: polled after every step; True makes the job checkpoint and stop (the job says
            how: :class:`~rehyat.training.distill.DistillCancelled`, ``FinetuneResult.cancelled``).
    """

    on_step: ProgressHook | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class OutputFile:
    """One file of a job's output group: ``<folder>/<stem><suffix>``, written by ``save(path)``.

    ``save`` must create a new file and never replace one (``FileExistsError`` when it exists).
    """

    key: str
    folder: str | os.PathLike[str]
    suffix: str
    save: Callable[[Path], Any]


def write_output_group(stem: str, files: Sequence[OutputFile]) -> dict[str, str]:
    """Write ``files`` under the first stem free in all their folders (``stem``, ``stem_01`` …).

    Race-free and never overwriting (see :func:`rehyat.atomic.create_file_group`).

    Returns:
        ``{key: path written}``.
    """
    saved = create_file_group(stem, [(f.folder, f.suffix, f.save) for f in files])
    return {f.key: str(path) for f, path in zip(files, saved, strict=True)}


def open_run_folder(
    runs_dir: str | os.PathLike[str],
    run_name: str,
    identity: Mapping[str, Any],
    ctx: DistributedContext,
    *,
    keep_last: int = 2,
) -> RunFolder:
    """The run folder ``runs_dir/run_name`` bound to ``identity``: created (or resumed) by the main
    process, then opened by the others (a run made for other settings is refused)."""
    folder = RunFolder(runs_dir, run_name, identity, keep_last=keep_last) if ctx.is_main else None
    ctx.barrier()
    if folder is None:
        folder = RunFolder(runs_dir, run_name, identity, keep_last=keep_last, create=False)
    return folder
