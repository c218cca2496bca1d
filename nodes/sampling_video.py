"""ComfyUI glue of the growing video: each decoded chunk is appended to ``output/<prefix>_NNNNN_.mp4``.

The file is a fragmented H.264 MP4 (:class:`rehyat.video.GrowingMp4Writer`): a player opens it while
chunks are still being sampled. Only one chunk's frames pass through the writer at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from ..rehyat.atomic import create_numbered
from ..rehyat.config import require_int
from ..rehyat.file_names import check_name_length, check_relative_name
from ..rehyat.video import GrowingMp4Writer, pyav_available

LOG = logging.getLogger("rehyat")
DEFAULT_FPS = 16
MAX_FPS = 240

VIDEO_INPUTS = [
    io.String.Input("video_prefix", default="", optional=True,
                    tooltip="empty = off. With a VAE: each decoded chunk is appended to "
                            "output/<video_prefix>_NNNNN_.mp4 (H.264, fragmented: a player opens it while it "
                            "grows); needs PyAV (pip install av) and batch size 1"),
    io.Int.Input("fps", default=DEFAULT_FPS, min=1, max=MAX_FPS, optional=True,
                 tooltip="frame rate of the growing video (Wan2.1: 16)"),
]


class GrowingVideo:
    """Receives decoded chunks ``(B, t, H, W, 3)`` in [0, 1] and appends them to one numbered MP4."""

    def __init__(self, prefix: str, fps: int) -> None:
        self.prefix, self.fps = prefix, fps
        self.writer: GrowingMp4Writer | None = None
        self.path: str | None = None

    def attach(self, chunk_writer: Any) -> None:
        """Listen to a :class:`.sampling_comfy.ChunkImageWriter`'s decoded chunks."""
        chunk_writer.listeners.append(self.append)

    def append(self, pixels: torch.Tensor) -> None:
        """Append one decoded chunk (batch 1)."""
        if pixels.shape[0] != 1:
            raise ValueError(f"video_prefix writes one clip, but the batch holds {pixels.shape[0]}: use "
                             "batch size 1 or leave video_prefix empty")
        if self.writer is None:
            self.writer = self._open()
        self.writer.append(pixels[0].float().clamp(0, 1).cpu())  # (t, H, W, 3)

    def close(self) -> None:
        """Finish the file (flushes the encoder)."""
        if self.writer is not None:
            self.writer.close()
            LOG.info("ReHyAt: video %s (%d frames)", self.path, self.writer.frames_written)

    def _open(self) -> GrowingMp4Writer:
        output = folder_paths.get_output_directory()
        try:
            folder, filename, counter, _, _ = folder_paths.get_save_image_path(self.prefix, output)
        except Exception as err:  # ComfyUI raises a bare Exception for an escaping prefix
            raise ValueError(f"video_prefix {self.prefix!r} is not allowed: {err}") from None
        check_name_length(f"{filename}_{counter:05}_.mp4", "video_prefix")
        os.makedirs(folder, exist_ok=True)

        def create(path: Path) -> GrowingMp4Writer:
            writer = GrowingMp4Writer(path, self.fps)
            self.path = str(path)
            return writer

        return create_numbered(lambda n: Path(folder) / f"{filename}_{n:05}_.mp4", create, first=counter)


@contextlib.contextmanager
def growing_video(prefix: str, fps: int, vae: Any) -> Iterator[Any]:
    """``attach(chunk_writer)`` for a non-empty ``prefix`` (None when off); closes the file at the end."""
    if not prefix:
        yield None
        return
    check_relative_name(prefix, "video_prefix")
    require_int("fps", fps, low=1, high=MAX_FPS)
    if vae is None:
        raise ValueError("video_prefix needs a VAE connected: the video is made of the decoded chunks")
    if not pyav_available():
        raise ValueError("video_prefix needs PyAV to write the MP4: pip install av (or leave video_prefix "
                         "empty)")
    video = GrowingVideo(prefix, fps)
    try:
        yield video.attach
    finally:
        video.close()


__all__ = ["DEFAULT_FPS", "VIDEO_INPUTS", "GrowingVideo", "growing_video"]
