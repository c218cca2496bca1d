"""Node: patch a Wan2.1 model with ReHyAt self-attention (returns a patched clone)."""

from __future__ import annotations

from comfy_api.latest import io

from ..rehyat.config import PLACEMENTS, ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from ..rehyat.integrations.comfyui_wan import FORWARD_MODES, build_hybrid_modules, patch_comfy_wan
from .folders import phi_file_choices, phi_file_path

NO_FILE = "(none: untrained φ)"
_DEFAULTS = HybridAttentionConfig()


class ReHyAtPatchWan(io.ComfyNode):
    """Convert self-attention blocks of a Wan2.1 model to ReHyAt; the input model is untouched."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: the model, an optional φ file and the conversion settings; output: the clone."""
        return io.Schema(
            node_id="ReHyAtPatchWan",
            display_name="ReHyAt Patch Wan",
            category="ReHyAt",
            description=(
                "Turns Wan2.1 self-attention into ReHyAt (recurrent hybrid attention). With a φ file "
                "its conversion settings are used; 'recurrent' runs the DiT chunk by chunk in constant "
                "memory and needs every block converted and causal."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("phi_file", options=[NO_FILE, *phi_file_choices()], default=NO_FILE),
                io.Int.Input("num_blocks", default=30, min=0, max=1000,
                             tooltip="blocks to convert (clamped to the model's block count)"),
                io.Combo.Input("placement", options=list(PLACEMENTS), default="last"),
                io.Int.Input("chunk_frames", default=_DEFAULTS.chunk_frames, min=1, max=1000),
                io.Int.Input("overlap_frames", default=_DEFAULTS.overlap_frames, min=0, max=1000),
                io.Boolean.Input("causal", default=_DEFAULTS.causal),
                io.Combo.Input("forward_mode", options=list(FORWARD_MODES), default="parallel"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, phi_file, num_blocks, placement, chunk_frames, overlap_frames, causal,
                forward_mode) -> io.NodeOutput:
        """Patch a clone of ``model``: φ from ``phi_file`` (its settings win) or untrained φ."""
        wan = model.get_model_object("diffusion_model")
        if phi_file == NO_FILE:
            config = ConversionConfig(
                num_blocks=min(num_blocks, len(wan.blocks)), placement=placement,
                attention=HybridAttentionConfig(chunk_frames=chunk_frames, overlap_frames=overlap_frames,
                                                causal=causal, feature_map=FeatureMapConfig()))
            hybrid = build_hybrid_modules(wan, config, config.resolve_blocks(len(wan.blocks)))
        else:
            from rehyat.integrations.comfyui_wan import load_phi_for_comfy

            config, hybrid = load_phi_for_comfy(model, phi_file_path(phi_file))
        return io.NodeOutput(patch_comfy_wan(model, config, hybrid, forward_mode=forward_mode))


NODES = [ReHyAtPatchWan]
