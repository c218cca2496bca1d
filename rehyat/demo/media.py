"""The demo's pictures: an animated side-by-side GIF and the time/memory-vs-length plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

SCALE = 4  # 32×32 frames are shown at 128×128
LABEL_HEIGHT = 14
GAP = 4


def to_uint8_frames(pixels: Tensor) -> np.ndarray:
    """``(3, T, H, W)`` in [-1, 1] → ``(T, H, W, 3)`` uint8."""
    rgb = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(1, 2, 3, 0).cpu().numpy()


def side_by_side_frames(
    clips: list[Tensor], labels: list[str], training_frames: int | None = None
) -> list[Image.Image]:
    """One RGB image per frame: the clips next to each other (upscaled), labelled, with a frame counter.

    Frames past ``training_frames`` get a note that the teacher never saw clips that long.
    """
    arrays = [to_uint8_frames(c) for c in clips]
    frames, h, w = arrays[0].shape[:3]
    width = len(arrays) * w * SCALE + (len(arrays) - 1) * GAP
    height = h * SCALE + 2 * LABEL_HEIGHT
    images = []
    for t in range(frames):
        canvas = Image.new("RGB", (width, height), (40, 40, 40))
        draw = ImageDraw.Draw(canvas)
        for i, (array, label) in enumerate(zip(arrays, labels, strict=True)):
            x = i * (w * SCALE + GAP)
            tile = Image.fromarray(array[t]).resize((w * SCALE, h * SCALE), Image.NEAREST)
            canvas.paste(tile, (x, LABEL_HEIGHT))
            draw.text((x + 2, 1), label, fill=(230, 230, 230))
        note = f"frame {t + 1}/{frames}"
        if training_frames is not None and t >= training_frames:
            note += f"  (beyond the {training_frames}-frame training length)"
        draw.text((2, LABEL_HEIGHT + h * SCALE + 1), note, fill=(200, 200, 120))
        images.append(canvas)
    return images


def write_gif(images: list[Image.Image], path: str | os.PathLike[str], fps: float = 8.0) -> Path:
    """An endlessly looping GIF (written to a temporary sibling, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    os.replace(tmp, path)
    return path


def write_mp4(images: list[Image.Image], path: str | os.PathLike[str], fps: int = 8) -> Path | None:
    """An H.264 MP4 of ``images`` when PyAV (``av``, e.g. installed with ComfyUI) is available, else None."""
    try:
        import av
    except ImportError:
        return None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.mp4")
    width, height = images[0].size
    container = av.open(str(tmp), "w")
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for image in images:
            rgb = np.asarray(image)[: stream.height, : stream.width]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    os.replace(tmp, path)
    return path


def plot_time_memory(measurements: list[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    """Two panels — seconds and working memory (MiB) of one model evaluation vs clip length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, style in (("teacher", "o-"), ("rehyat", "s-")):
        rows = [m for m in measurements if m["model"] == name]
        lengths = [m["frames"] for m in rows]
        axes[0].plot(lengths, [m["seconds"] for m in rows], style, label=_label(name))
        memory = [m["working_memory_mib"] for m in rows]
        if all(v is not None for v in memory):
            axes[1].plot(lengths, memory, style, label=_label(name))
    axes[0].set_ylabel("seconds per model evaluation")
    axes[1].set_ylabel("peak working memory (MiB)")
    for ax in axes:
        ax.set_xlabel("clip length (frames)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _label(name: str) -> str:
    return "teacher (softmax, all frames)" if name == "teacher" else "ReHyAt (recurrent, chunk by chunk)"
