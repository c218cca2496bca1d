"""Nodes: save a CONDITIONING to safetensors and load it back (no text encoder needed afterwards)."""

from __future__ import annotations

import logging
import os
from typing import Any

import folder_paths
from comfy_api.latest import io

from ..rehyat.conditioning_io import ConditioningObject, load_conditioning, save_conditioning
from .folders import CONDITIONING_FOLDER, conditioning_file_choices, file_path, save_numbered

LOG = logging.getLogger("ReHyAt")


def _to_comfy(value: Any) -> Any:
    """Loaded values → ComfyUI's types (a saved CLIP-vision output becomes ``comfy.clip_vision.Output``)."""
    if isinstance(value, ConditioningObject):
        if value.class_name == "comfy.clip_vision.Output":
            import comfy.clip_vision

            output = comfy.clip_vision.Output()
            for key, item in value.attributes().items():
                output[key] = _to_comfy(item)
            return output
        raise ValueError(f"unsupported saved object {value.class_name!r}")
    if isinstance(value, list):
        return [_to_comfy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_comfy(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_comfy(v) for k, v in value.items()}
    return value


class ReHyAtSaveConditioning(io.ComfyNode):
    """Save a CONDITIONING (text embeddings and their extras) to ``output/rehyat_conditioning``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: the conditioning and a file-name prefix; output: the saved file's name."""
        return io.Schema(
            node_id="ReHyAtSaveConditioning",
            display_name="ReHyAt Save Conditioning",
            category="ReHyAt/model",
            is_output_node=True,
            description=(
                "Saves a CONDITIONING (e.g. from CLIP Text Encode with umT5) with its extra keys to "
                "ComfyUI/output/rehyat_conditioning/<prefix>_00001_.safetensors, so later runs load it with "
                "'ReHyAt Load Conditioning' instead of keeping the 11 GB text encoder loaded. Extras that "
                "cannot be stored (ControlNets, hooks) are refused, never dropped."
            ),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The conditioning to save."),
                io.String.Input("filename_prefix", default="rehyat/prompt",
                                tooltip="File name prefix inside output/rehyat_conditioning; may contain "
                                        "sub-folders; '..' and absolute paths are refused."),
            ],
            outputs=[io.String.Output(display_name="file",
                                      tooltip="The saved file, as 'ReHyAt Load Conditioning' lists it.")],
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix) -> io.NodeOutput:
        """Write the file atomically and report its name."""
        def save(path):
            try:
                return save_conditioning(path, conditioning, replace=False)
            except ValueError as err:
                raise ValueError(f"conditioning: {err}") from None

        path = save_numbered(CONDITIONING_FOLDER, filename_prefix, save)
        folder = os.path.abspath(folder_paths.get_folder_paths(CONDITIONING_FOLDER)[0])
        relative = os.path.relpath(path, folder).replace(os.sep, "/")
        LOG.info("ReHyAt: saved conditioning to %s", path)
        return io.NodeOutput(relative, ui={"text": [relative]})


class ReHyAtLoadConditioning(io.ComfyNode):
    """Load a CONDITIONING saved by :class:`ReHyAtSaveConditioning`."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Input: the file; output: the conditioning."""
        return io.Schema(
            node_id="ReHyAtLoadConditioning",
            display_name="ReHyAt Load Conditioning",
            category="ReHyAt/model",
            description=(
                "Loads a conditioning saved by 'ReHyAt Save Conditioning' from "
                "ComfyUI/output/rehyat_conditioning (safetensors only): the prompt's embeddings without "
                "loading the text encoder."
            ),
            inputs=[
                io.Combo.Input("conditioning_file", options=conditioning_file_choices(),
                               tooltip="A file in ComfyUI/output/rehyat_conditioning (or a folder added "
                                       "under 'rehyat_conditioning' in extra_model_paths.yaml)."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The saved conditioning, with its extra keys.")],
        )

    @classmethod
    def execute(cls, conditioning_file) -> io.NodeOutput:
        """Read the file."""
        path = file_path(CONDITIONING_FOLDER, conditioning_file, "conditioning_file")
        entries = load_conditioning(path)
        return io.NodeOutput([[cond, _to_comfy(extras)] for cond, extras in entries])


NODES = [ReHyAtSaveConditioning, ReHyAtLoadConditioning]
