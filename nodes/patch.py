"""Nodes: patch a Wan2.1 model with ReHyAt self-attention (Patch Model, and the deprecated Patch Wan).

Both return a patched clone; the incoming model is never touched. With a φ the φ's settings rule;
without one the φ are untrained, which the node says in its output text and the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig, check_recurrent_capable
from ..rehyat.integrations.comfyui_wan import (
    FORWARD_MODES,
    build_hybrid_modules,
    comfy_base_info,
    comfy_fingerprint,
    patch_comfy_wan,
)
from ..rehyat.weights import PhiWeights, apply_phi_tensors, check_compatible
from .conversion_widgets import causal_input, chunk_frames_input, overlap_frames_input, placement_input
from .folders import phi_file_choices, phi_file_path

LOG = logging.getLogger("ReHyAt")
PHI_TYPE = io.Custom("REHYAT_PHI")
"""Socket type of a loaded φ file (value: :class:`rehyat.weights.PhiWeights`)."""

PAPER_NUM_BLOCKS = 15
"""Default block count without φ: the paper's lightest setting (15 of Wan2.1-1.3B's 30 blocks)."""

NO_FILE = "(none: untrained φ)"
_WITHOUT_PHI, _IGNORED = "Without φ: ", " Ignored with a φ."
UNTRAINED_WARNING = (
    "φ are UNTRAINED (no φ connected): the converted blocks' linear attention is a random feature "
    "map, so quality will be poor — connect a distilled φ (Load φ / Load φ from Hub) for real use"
)


@dataclass(frozen=True)
class PatchRequest:
    """The widget values of a patch node (used only when no φ is given)."""

    num_blocks: int
    placement: str
    chunk_frames: int
    overlap_frames: int
    causal: bool
    forward_mode: str


def model_fingerprint(model: Any) -> list[float]:
    """Fingerprint of the **base** self-attention weights of a ComfyUI ``ModelPatcher``'s Wan model
    (see :func:`rehyat.integrations.comfyui_wan.comfy_fingerprint`)."""
    return comfy_fingerprint(model)


def patch_model(model: Any, phi: PhiWeights | None, request: PatchRequest, *,
                clamp_blocks: bool = False) -> tuple[Any, str]:
    """Patch a clone of ``model``; return it and the text that says what was done."""
    if request.forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {FORWARD_MODES}; got {request.forward_mode!r}")
    wan = model.get_model_object("diffusion_model")
    total = len(wan.blocks)
    if phi is not None:
        check_compatible(phi, comfy_base_info(model), model_fingerprint(model))
        config, blocks = phi.config, phi.blocks
        hybrid = build_hybrid_modules(wan, config, blocks)
        apply_phi_tensors(hybrid, phi.tensors)
        lines = [f"φ loaded: its settings rule — {describe_conversion(config, blocks, total)}."]
        ignored = _ignored_widgets(config, blocks, request, total)
        if ignored:
            lines.append("Widgets ignored because the φ sets them: " + ", ".join(ignored) + ".")
    else:
        num_blocks = min(request.num_blocks, total) if clamp_blocks else request.num_blocks
        if num_blocks > total:
            raise ValueError(
                f"num_blocks must be in [0, {total}] for this {total}-block model; got {num_blocks}"
            )
        config = ConversionConfig(
            num_blocks=num_blocks, placement=request.placement,
            attention=HybridAttentionConfig(chunk_frames=request.chunk_frames,
                                            overlap_frames=request.overlap_frames,
                                            causal=request.causal, feature_map=FeatureMapConfig()))
        blocks = config.resolve_blocks(total)
        hybrid = build_hybrid_modules(wan, config, blocks)
        lines = [UNTRAINED_WARNING + ".", f"Converted: {describe_conversion(config, blocks, total)}."]
        LOG.warning("ReHyAt: %s", UNTRAINED_WARNING)
    if request.forward_mode == "recurrent":
        check_recurrent_capable(blocks, total, config.attention.causal, config.attention.variant,
                                what="forward_mode 'recurrent'", instead="use forward_mode 'parallel'")
    clone = patch_comfy_wan(model, config, hybrid, forward_mode=request.forward_mode)
    lines.append(f"forward_mode: {request.forward_mode}.")
    text = "\n".join(lines)
    LOG.info("ReHyAt patch: %s", text.replace("\n", " "))
    return clone, text


def describe_conversion(config: ConversionConfig, blocks: tuple[int, ...], total: int) -> str:
    """E.g. ``15 of 30 blocks [1, 3, …], Tc=3, To=1, causal, φ 256→256``."""
    attention, phi = config.attention, config.attention.feature_map
    shown = list(blocks) if len(blocks) <= 12 else [*blocks[:6], "…", *blocks[-3:]]
    return (f"{len(blocks)} of {total} blocks {shown}, chunk_frames (Tc)={attention.chunk_frames}, "
            f"overlap_frames (To)={attention.overlap_frames}, "
            f"{'causal' if attention.causal else 'non-causal'}, φ hidden {phi.hidden_dim} → "
            f"features {phi.feature_dim}")


def _ignored_widgets(config: ConversionConfig, blocks: tuple[int, ...], request: PatchRequest,
                     total: int) -> list[str]:
    attention = config.attention
    ignored = []
    if request.num_blocks != len(blocks):
        ignored.append(f"num_blocks={request.num_blocks} (φ: {len(blocks)})")
    if request.chunk_frames != attention.chunk_frames:
        ignored.append(f"chunk_frames={request.chunk_frames} (φ: {attention.chunk_frames})")
    if request.overlap_frames != attention.overlap_frames:
        ignored.append(f"overlap_frames={request.overlap_frames} (φ: {attention.overlap_frames})")
    if request.causal != attention.causal:
        ignored.append(f"causal={request.causal} (φ: {attention.causal})")
    if len(blocks) not in (0, total) and ConversionConfig(
            num_blocks=len(blocks), placement=request.placement).resolve_blocks(total) != blocks:
        ignored.append(f"placement={request.placement!r}")
    return ignored


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
