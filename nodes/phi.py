"""Nodes: load a φ file from ``models/rehyat`` and save a patched model's φ into it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..rehyat.integrations.comfyui_wan import comfy_base_info, comfy_patch_info
from ..rehyat.weights import PhiWeights, load_phi_weights, save_phi_weights
from .folders import FOLDER_NAME, phi_file_choices, phi_file_path, save_numbered
from .patch import PHI_TYPE
from .patching import describe_conversion, model_fingerprint

LOG = logging.getLogger("ReHyAt")
TRAINING_ATTACHMENT = "rehyat_training"
"""``ModelPatcher.attachments`` key where training nodes leave their training metadata (a dict)."""


def describe_phi(phi: PhiWeights, source: str) -> str:
    """The metadata text the φ nodes output: blocks, Tc, To, causal, base model, training."""
    base = phi.base
    training = ("not recorded in the file" if phi.training is None
                else json.dumps(phi.training, sort_keys=True, ensure_ascii=False))
    return "\n".join([
        f"φ file: {source}",
        f"conversion: {describe_conversion(phi.config, phi.blocks, base.num_layers)}",
        f"base model: Wan transformer dim={base.dim}, heads={base.num_heads}, layers={base.num_layers} "
        f"(self-attention fingerprint of {len(phi.fingerprint)} values is checked when patching)",
        f"training: {training}",
        f"written by ComfyUI-ReHyAt {phi.rehyat_version}, format version {phi.format_version}",
    ])


class ReHyAtLoadPhi(io.ComfyNode):
    """Load a φ file (the trained feature maps of a converted model) from ``models/rehyat``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Input: the file; outputs: the φ and a description of its metadata."""
        return io.Schema(
            node_id="ReHyAtLoadPhi",
            display_name="ReHyAt Load φ",
            category="ReHyAt/model",
            description=(
                "Loads trained ReHyAt feature maps (φ) from ComfyUI/models/rehyat (safetensors only) for "
                "'ReHyAt Patch Model'. The text output says which blocks, chunking (Tc, To), causality and "
                "base model the φ were made for, and how they were trained."
            ),
            inputs=[
                io.Combo.Input("phi_file", options=phi_file_choices(),
                               tooltip="A .safetensors φ file in ComfyUI/models/rehyat (or a folder added "
                                       "under 'rehyat' in extra_model_paths.yaml). Sub-folders and symlinks "
                                       "work as for ComfyUI's own model folders."),
            ],
            outputs=[PHI_TYPE.Output(display_name="phi", tooltip="The φ, for 'ReHyAt Patch Model'."),
                     io.String.Output(display_name="info", tooltip="The file's metadata, readable.")],
        )

    @classmethod
    def execute(cls, phi_file) -> io.NodeOutput:
        """Read and validate the file."""
        phi = load_phi_weights(phi_file_path(phi_file))
        return io.NodeOutput(phi, describe_phi(phi, phi_file))


class ReHyAtSavePhi(io.ComfyNode):
    """Save the φ of a ReHyAt-patched model to a new file in ``models/rehyat``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: the patched model and a file-name prefix; output: the saved file's name."""
        return io.Schema(
            node_id="ReHyAtSavePhi",
            display_name="ReHyAt Save φ",
            category="ReHyAt/model",
            is_output_node=True,
            description=(
                "Writes the φ of a model patched by 'ReHyAt Patch Model' (e.g. after distillation) to "
                "ComfyUI/models/rehyat/<prefix>_00001_.safetensors — numbered like ComfyUI's save nodes, "
                "never overwriting, written atomically — so 'ReHyAt Load φ' lists it."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A model patched by 'ReHyAt Patch Model' (its φ are saved)."),
                io.String.Input("filename_prefix", default="rehyat/phi",
                                tooltip="File name prefix inside models/rehyat; may contain sub-folders "
                                        "(created); '..' and absolute paths are refused."),
            ],
            outputs=[io.String.Output(display_name="file",
                                      tooltip="The saved file, relative to models/rehyat.")],
        )

    @classmethod
    def execute(cls, model, filename_prefix) -> io.NodeOutput:
        """Write the file and report its name."""
        patch = comfy_patch_info(model)
        if patch is None:
            raise ValueError("model: this model is not ReHyAt-patched — connect the output of "
                             "'ReHyAt Patch Model' (there are no φ to save)")
        training = getattr(model, "attachments", {}).get(TRAINING_ATTACHMENT)
        base, fingerprint = comfy_base_info(model), model_fingerprint(model)
        path = save_numbered(
            FOLDER_NAME,
            filename_prefix,
            lambda p: save_phi_weights(p, patch.hybrid, patch.config, base, fingerprint, training=training,
                                       replace=False),
        )
        relative = Path(os.path.relpath(path, os.path.abspath(folder_paths.get_folder_paths(FOLDER_NAME)[0])))
        relative = relative.as_posix()
        LOG.info("ReHyAt: saved φ to %s", path)
        return io.NodeOutput(relative, ui={"text": [relative]})


NODES = [ReHyAtLoadPhi, ReHyAtSavePhi]
