"""The schema inputs and outputs the pack's training nodes (ReHyAt Distill φ, ReHyAt Finetune)
declare alike. Their ComfyUI runtime specifics are in :mod:`.training_comfy`. No nodes here."""

from __future__ import annotations

from comfy_api.latest import io


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
