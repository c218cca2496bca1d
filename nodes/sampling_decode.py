"""Decoding finished chunks as they land: the Wan VAE's causal cache carried over, numbered PNGs,
and listeners (e.g. a growing MP4) fed one chunk at a time."""

from __future__ import annotations

import os
from typing import Any

import comfy.model_management
import folder_paths
import numpy as np
import torch
from PIL import Image

from ..rehyat.streaming import ProgressiveWanDecoder


class ChunkImageWriter:
    """Decodes finished chunks with the Wan VAE's causal cache carried over and writes numbered PNGs."""

    def __init__(self, vae: Any, filename_prefix: str = "ReHyAt/chunk", save: bool = True):
        self.vae = vae
        self.decoder = ProgressiveWanDecoder(vae.first_stage_model)
        self.prefix, self.save = filename_prefix, save
        self.pieces: list[torch.Tensor] = []  # (B, t, H, W, 3) per chunk
        self.listeners: list[Any] = []  # called with each decoded chunk (B, t, H, W, 3), e.g. a growing video
        self.frames_written = 0
        self._folder: tuple[str, str, int] | None = None

    def __call__(self, latent: torch.Tensor, frame_start: int = 0, frame_end: int = 0) -> None:
        pixels = self._decode(latent)  # (B, t, H, W, 3)
        self.pieces.append(pixels.cpu())
        if self.save:
            self._write(pixels)
        for listener in self.listeners:
            listener(pixels)

    def warm_up(self, latent: torch.Tensor, chunk_frames: int) -> None:
        """Decode the clip's earlier ``latent`` chunk by chunk, keeping nothing but the VAE's causal cache.

        The frames decoded next then equal those of a whole-clip decode (used when extending a clip);
        costs one decode of ``latent``, holding one chunk's pixels at a time.
        """
        for f0 in range(0, latent.shape[2], chunk_frames):
            self._decode(latent[:, :, f0:f0 + chunk_frames])

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        vae = self.vae
        memory = vae.memory_used_decode(latent.shape, vae.vae_dtype)
        comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory,
                                               force_full_load=getattr(vae, "disable_offload", False))
        z = latent.to(vae.vae_dtype).to(vae.device)
        pixels = vae.process_output(self.decoder.decode(z).to(vae.output_device).float())  # (B, 3, t, H, W)
        return pixels.movedim(1, -1)  # (B, t, H, W, 3)

    def _write(self, pixels: torch.Tensor) -> None:
        if self._folder is None:
            folder, filename, counter, _, _ = folder_paths.get_save_image_path(
                self.prefix, folder_paths.get_output_directory(), pixels.shape[3], pixels.shape[2])
            os.makedirs(folder, exist_ok=True)
            self._folder = (folder, filename, counter)
        folder, filename, counter = self._folder
        for b in range(pixels.shape[0]):
            for t in range(pixels.shape[1]):
                frame = self.frames_written + t
                image = (pixels[b, t].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                name = f"{filename}_{counter:05}_b{b}_{frame:05}.png"
                tmp = os.path.join(folder, f".{name}.tmp")
                Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
                os.replace(tmp, os.path.join(folder, name))  # atomic: a reader never sees half a frame
        self.frames_written += pixels.shape[1]

    def images(self) -> torch.Tensor:
        """All decoded frames as a ComfyUI IMAGE ``(B·T', H, W, 3)`` (items one after another)."""
        video = torch.cat(self.pieces, dim=1)  # (B, T', H, W, 3)
        return video.reshape(-1, *video.shape[2:])


__all__ = ["ChunkImageWriter"]
