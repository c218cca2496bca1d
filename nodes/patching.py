"""What the patch nodes do: patch a clone of a ComfyUI Wan2.1 model and say what was done.

With a φ the φ's settings rule (widgets that differ are reported as ignored); without one the φ are
untrained, which the report text and the log say. No nodes here (no ``NODES``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig, check_recurrent_capable
from ..rehyat.integrations.comfyui_wan import (
    FORWARD_MODES,
    build_hybrid_modules,
    comfy_base_info,
    comfy_fingerprint,
    patch_comfy_wan,
)
from ..rehyat.weights import PhiWeights, apply_phi_tensors, check_compatible

LOG = logging.getLogger("ReHyAt")
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
        check_recurrent_capable(blocks, total, config.attention,
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
