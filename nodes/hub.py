"""Node: fetch a φ file from the Hugging Face Hub into ``models/rehyat`` and load it."""

from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..rehyat.hub import DEFAULT_TIMEOUT, fetch_phi_file
from ..rehyat.weights import load_phi_weights
from .folders import FOLDER_NAME
from .patch import PHI_TYPE
from .phi import describe_phi

LOG = logging.getLogger("ReHyAt")


class ReHyAtLoadPhiFromHub(io.ComfyNode):
    """Download (or take from the local cache) a φ file of a Hub repository and load it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: repository, file and revision; outputs: the φ and its metadata text."""
        return io.Schema(
            node_id="ReHyAtLoadPhiFromHub",
            display_name="ReHyAt Load φ from Hub",
            category="ReHyAt/model",
            description=(
                "Fetches a ReHyAt φ file (.safetensors only) from a Hugging Face model repository with "
                "huggingface_hub — into its local cache, then models/rehyat/hub/<owner>--<name>/<commit>/ — "
                "and loads it. Only when the node runs, never at start-up. Honours HF_HUB_OFFLINE and "
                "HF_HOME / HF_HUB_CACHE: offline, a file that is not cached is a clear error, never a hang."
            ),
            inputs=[
                io.String.Input("repo_id", default="",
                                tooltip="Hugging Face model repository, 'owner/name'."),
                io.String.Input("filename", default="phi.safetensors",
                                tooltip="Path of the .safetensors φ file inside the repository."),
                io.String.Input("revision", default="main",
                                tooltip="Branch, tag or commit hash; a commit hash pins the exact file."),
            ],
            outputs=[PHI_TYPE.Output(display_name="phi", tooltip="The φ, for 'ReHyAt Patch Model'."),
                     io.String.Output(display_name="info", tooltip="Where it came from and its metadata.")],
        )

    @classmethod
    def execute(cls, repo_id, filename, revision) -> io.NodeOutput:
        """Fetch, then read and validate the file."""
        dest = folder_paths.get_folder_paths(FOLDER_NAME)[0]
        fetched = fetch_phi_file(repo_id, filename, revision, dest, timeout=DEFAULT_TIMEOUT)
        LOG.info("ReHyAt: φ %s of %s (commit %s) at %s", filename, repo_id, fetched.commit, fetched.path)
        phi = load_phi_weights(fetched.path)
        source = (f"{repo_id}/{filename} @ {revision} (commit {fetched.commit}) → "
                  f"models/rehyat/{fetched.relative}")
        return io.NodeOutput(phi, describe_phi(phi, source))


NODES = [ReHyAtLoadPhiFromHub]
