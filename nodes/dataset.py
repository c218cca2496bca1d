"""Node: append one (video latent, text conditioning) sample to a fine-tuning dataset folder."""

from __future__ import annotations

import json
import os

from comfy_api.latest import io

from ..rehyat.training.dataset import LatentDataset
from ..rehyat.training.dataset_build import WAN21_DATASET_MODEL, conditioning_tensor
from ..rehyat.training.runs import validate_run_name
from ..rehyat.video_latent import WAN_TIME_STRIDE

DATASETS_FOLDER = "rehyat_datasets"
"""Datasets live in ``<ComfyUI models>/rehyat_datasets/<dataset_name>/``."""


def datasets_root() -> str:
    """``<ComfyUI models directory>/rehyat_datasets``."""
    import folder_paths

    return os.path.join(folder_paths.models_dir, DATASETS_FOLDER)


def dataset_path(name: str, parameter: str = "dataset_name") -> str:
    """The folder of dataset ``name`` (a plain folder name; never escapes the datasets folder)."""
    return os.path.join(datasets_root(), validate_run_name(name, parameter))


class ReHyAtMakeDataset(io.ComfyNode):
    """Append a sample to a fine-tuning dataset: video frames (IMAGE + VAE) or a LATENT, plus its prompt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Dataset name, conditioning and the video (frames + VAE, or a latent) → report."""
        return io.Schema(
            node_id="ReHyAtMakeDataset",
            display_name="ReHyAt Make Dataset (append sample)",
            category="ReHyAt/training",
            is_experimental=True,
            is_output_node=True,
            description=(
                "Adds ONE training sample for ReHyAt Finetune to the folder "
                "models/rehyat_datasets/<dataset_name> "
                "(created on first use): the video's Wan2.1 latent and the text conditioning that describes "
                "it. "
                "Give either video frames + the Wan VAE (real clips; 1+4k frames), or a LATENT — e.g. a "
                "KSampler "
                "output of the original Wan for the paper's synthetic recipe (its own generations for a "
                "prompt "
                "list × seeds). Every sample of a dataset must have the same size; a mismatch is refused. "
                "Queue it once per clip / seed."
            ),
            inputs=[
                io.String.Input(
                    "dataset_name",
                    default="my_dataset",
                    tooltip="folder name under models/rehyat_datasets (created if missing)",
                ),
                io.Conditioning.Input(
                    "conditioning", tooltip="the prompt of this clip (text encoder output; one prompt)"
                ),
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="video frames (1+4k of them, e.g. 81; sizes multiple of 16); needs 'vae'",
                ),
                io.Vae.Input("vae", optional=True, tooltip="the Wan2.1 VAE that encodes 'images'"),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="a video LATENT instead of images (e.g. the original Wan's KSampler output)",
                ),
                io.String.Input(
                    "note",
                    default="",
                    optional=True,
                    tooltip="free text stored with the sample in the manifest (e.g. prompt, seed)",
                ),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="dataset folder, sample count and shapes"),
                io.String.Output(
                    display_name="dataset_name",
                    tooltip="the dataset's name: link it to ReHyAt Finetune's dataset_name so "
                    "training runs after the sample is added",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, dataset_name, conditioning, images=None, vae=None, latent=None, note=""
    ) -> io.NodeOutput:
        """Encode (if frames are given), normalise to the model's latent space and append."""
        import comfy.latent_formats

        folder = dataset_path(dataset_name)
        context = conditioning_tensor(conditioning, "conditioning")
        if latent is not None and images is not None:
            raise ValueError(
                "images / latent: connect either video frames (with a VAE) or a latent, not both"
            )
        if latent is not None:
            raw, source = latent["samples"], "latent"
            if latent.get("noise_mask") is not None:
                raise ValueError(
                    "latent: a latent with a noise mask is not a training sample; remove the mask"
                )
        elif images is not None:
            if vae is None:
                raise ValueError("vae: connect the Wan2.1 VAE to encode 'images'")
            frames = images.shape[0]
            if (frames - 1) % WAN_TIME_STRIDE:
                raise ValueError(f"images: the Wan VAE needs 1+4k frames (e.g. 17, 81); got {frames}")
            raw, source = vae.encode(images[:, :, :, :3]), "video"
        else:
            raise ValueError("images / latent: connect video frames (with a VAE) or a latent")
        if raw.ndim != 5 or raw.shape[0] != 1 or raw.shape[1] != 16:
            raise ValueError(
                f"latent must be one Wan2.1 video latent (1, 16, T, H, W); got {tuple(raw.shape)}"
            )
        sample = comfy.latent_formats.Wan21().process_in(raw.float())  # the model's own latent space
        dataset = LatentDataset(folder, model=WAN21_DATASET_MODEL)
        info = {"source": source, "note": note or "", "latent_frames": int(raw.shape[2])}
        if source == "video":
            info.update(
                video_frames=int(images.shape[0]), height=int(images.shape[1]), width=int(images.shape[2])
            )
        path = dataset.append(sample[0], context.float(), info)
        report = {
            "dataset": folder,
            "samples": len(dataset),
            "latent_shape": list(dataset.latent_shape),
            "added": os.path.basename(path),
            "source": source,
        }
        return io.NodeOutput(json.dumps(report, indent=1), dataset_name)

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        """Always run: appending is a side effect (NaN never equals itself, so ComfyUI never caches it)."""
        return float("nan")


NODES = [ReHyAtMakeDataset]
