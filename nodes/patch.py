"""Nodes: patch a Wan2.1 model with ReHyAt self-attention (Patch Model, and the deprecated Patch Wan).

Both return a patched clone; the incoming model is never touched. With a φ the φ's settings rule;
without one the φ are untrained, which the node says in its output text and the log. The patching
itself is :func:`nodes.patching.patch_model`; this module declares the nodes.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..rehyat.integrations.comfyui_wan import FORWARD_MODES
from .conversion_widgets import causal_input, chunk_frames_input, overlap_frames_input, placement_input
from .folders import phi_file_choices, phi_file_path
from .patching import PatchRequest, patch_model

PHI_TYPE = io.Custom("REHYAT_PHI")
"""Socket type of a loaded φ file (value: :class:`rehyat.weights.PhiWeights`)."""

PAPER_NUM_BLOCKS = 15
"""Default block count without φ: the paper's lightest setting (15 of Wan2.1-1.3B's 30 blocks)."""

NO_FILE = "(none: untrained φ)"
_WITHOUT_PHI, _IGNORED = "Without φ: ", " Ignored with a φ."


def _conversion_inputs(num_blocks_default: int) -> list[io.Input]:
    """Widgets shared by both patch nodes (used only without φ)."""
    return [
        io.Int.Input("num_blocks", default=num_blocks_default, min=0, max=1000,
                     tooltip="Without φ: how many self-attention blocks become ReHyAt (the paper: 15, 20 or "
                             "25 of Wan2.1-1.3B's 30). 'recurrent' needs all of them (30 for 1.3B, 40 for "
                             "14B). More than the model has is an error. Ignored with a φ."),
        placement_input(_WITHOUT_PHI, _IGNORED),
        chunk_frames_input(_WITHOUT_PHI, _IGNORED),
        overlap_frames_input(_WITHOUT_PHI, _IGNORED),
        causal_input(_WITHOUT_PHI, _IGNORED),
        io.Combo.Input("forward_mode", options=list(FORWARD_MODES), default="parallel",
                       tooltip="parallel: all frames at once (works with some blocks left softmax). "
                               "recurrent: the whole DiT chunk by chunk in constant memory — needs every "
                               "block converted and causal. Both give the same numbers."),
    ]


class ReHyAtPatchModel(io.ComfyNode):
    """Convert self-attention blocks of a Wan2.1 model to ReHyAt; the input model is untouched."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: the model, an optional φ and the conversion settings; outputs: the clone and a report."""
        return io.Schema(
            node_id="ReHyAtPatchModel",
            display_name="ReHyAt Patch Model",
            category="ReHyAt/model",
            description=(
                "Turns a Wan2.1 model's self-attention into ReHyAt (recurrent hybrid attention: softmax "
                "within chunks, linear attention across them — linear time, constant memory). Connect a "
                "distilled φ for real use: its block selection, chunking and causality then rule. Without "
                "φ the feature maps are untrained (the report says so) and the widgets choose the blocks."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1 model (Load Diffusion Model); it is not modified."),
                PHI_TYPE.Input("phi", optional=True,
                               tooltip="Trained φ from 'ReHyAt Load φ' or 'ReHyAt Load φ from Hub'. Must be "
                                       "made for this checkpoint (width, depth and weight fingerprint are "
                                       "checked). Its settings override the widgets below."),
                *_conversion_inputs(PAPER_NUM_BLOCKS),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched clone."),
                     io.String.Output(display_name="report", tooltip="What was converted, and how.")],
        )

    @classmethod
    def execute(cls, model, num_blocks, placement, chunk_frames, overlap_frames, causal, forward_mode,
                phi=None) -> io.NodeOutput:
        """Patch a clone of ``model`` with ``phi`` (its settings rule) or untrained φ."""
        request = PatchRequest(num_blocks, placement, chunk_frames, overlap_frames, causal, forward_mode)
        clone, text = patch_model(model, phi, request)
        return io.NodeOutput(clone, text)


class ReHyAtPatchWan(io.ComfyNode):
    """Deprecated id of :class:`ReHyAtPatchModel`, kept so saved graphs keep loading and running."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """The old inputs (a φ file chooser instead of a φ socket); output: the clone."""
        return io.Schema(
            node_id="ReHyAtPatchWan",
            display_name="ReHyAt Patch Wan (deprecated: use Patch Model)",
            category="ReHyAt/model",
            is_deprecated=True,
            description=(
                "Deprecated alias of 'ReHyAt Patch Model' kept so saved graphs load: same patching, the "
                "φ chosen by file name. num_blocks larger than the model is clamped, as before. New "
                "graphs: use ReHyAt Load φ → ReHyAt Patch Model."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1 model; it is not modified."),
                io.Combo.Input("phi_file", options=[NO_FILE, *phi_file_choices()], default=NO_FILE,
                               tooltip="A φ file from models/rehyat (its settings rule), or untrained φ."),
                *_conversion_inputs(30),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, phi_file, num_blocks, placement, chunk_frames, overlap_frames, causal,
                forward_mode) -> io.NodeOutput:
        """Patch like :class:`ReHyAtPatchModel` (old semantics: num_blocks clamped to the model)."""
        from ..rehyat.weights import load_phi_weights

        phi = None if phi_file == NO_FILE else load_phi_weights(phi_file_path(phi_file))
        request = PatchRequest(num_blocks, placement, chunk_frames, overlap_frames, causal, forward_mode)
        clone, _ = patch_model(model, phi, request, clamp_blocks=True)
        return io.NodeOutput(clone)


NODES = [ReHyAtPatchModel, ReHyAtPatchWan]
