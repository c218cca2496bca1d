"""Plumbing shared by the pack's training nodes (ReHyAt Distill φ, ReHyAt Finetune).

Run folders under ``<ComfyUI output>/rehyat_runs``, the progress bar / Cancel wiring, the
loss-curve IMAGE and the schema inputs both nodes define alike. No nodes here (no ``NODES``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from comfy_api.latest import io

from ..rehyat.training.plots import loss_curve_image

RUNS_FOLDER = "rehyat_runs"
"""Run folders live in ``<ComfyUI output>/rehyat_runs/<run_name>/`` (not under models/, so their
checkpoints never appear in φ-file lists)."""


def runs_root() -> str:
    """``<ComfyUI output directory>/rehyat_runs``."""
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), RUNS_FOLDER)


def autograd_enabled() -> contextlib.AbstractContextManager:
    """Leave inference mode: ComfyUI runs nodes in inference mode, training needs autograd."""
    return torch.inference_mode(False)


def progress_callback(total: int) -> Callable[[int, int, float], None]:
    """A ``(step, total_steps, loss)`` callback that drives a ComfyUI progress bar of ``total`` steps."""
    import comfy.utils

    pbar = comfy.utils.ProgressBar(total)
    return lambda step, total_steps, loss: pbar.update_absolute(step, total_steps)


def should_stop() -> bool:
    """True once the user pressed Cancel (ComfyUI's interrupt flag)."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def interrupted() -> Exception:
    """The exception that tells ComfyUI a node stopped on Cancel (raise it)."""
    import comfy.model_management

    return comfy.model_management.InterruptProcessingException()


def loss_curve_tensor(curves: Mapping[str, Sequence[float]], **kwargs) -> torch.Tensor:
    """The loss-curve picture as a ComfyUI ``IMAGE``: ``(1, H, W, 3)`` float in [0, 1]."""
    return torch.from_numpy(loss_curve_image(curves, **kwargs)).float().div(255.0)[None]  # (1, H, W, 3)


def run_name_input(default: str, tooltip: str) -> io.String.Input:
    """The ``run_name`` input (run folder ``output/rehyat_runs/<run_name>``)."""
    return io.String.Input("run_name", default=default, tooltip=tooltip)


def checkpoint_every_input(default: int, tooltip: str) -> io.Int.Input:
    """The ``checkpoint_every`` input (steps between resumable checkpoints)."""
    return io.Int.Input("checkpoint_every", default=default, min=1, max=1_000_000, tooltip=tooltip)


def seed_input(tooltip: str) -> io.Int.Input:
    """The ``seed`` input of a training node (fixed, never changed after queueing)."""
    return io.Int.Input(
        "seed", default=0, min=0, max=2**31 - 1, control_after_generate=False, tooltip=tooltip
    )


def loss_curve_output(tooltip: str) -> io.Image.Output:
    """The ``loss_curve`` IMAGE output."""
    return io.Image.Output(display_name="loss_curve", tooltip=tooltip)
