"""The demo's pictures: labelled side-by-side videos (GIF, MP4 with PyAV) and the time/memory plot."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..atomic import atomic_write

MIN_PANEL = 384  # pixels: every panel is scaled up (nearest neighbour) to at least this size
LABEL_SIZE = 20  # font size of the panel labels
FOOTER_SIZE = 16
GAP = 8
BACKGROUND = (40, 40, 40)


def to_uint8_frames(pixels: Tensor) -> np.ndarray:
    """``(3, T, H, W)`` in [-1, 1] → ``(T, H, W, 3)`` uint8."""
    rgb = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(1, 2, 3, 0).cpu().numpy()


def panel_scale(height: int, width: int, min_panel: int = MIN_PANEL) -> int:
    """The integer nearest-neighbour scale that makes an ``height × width`` frame ≥ ``min_panel`` px."""
    return max(1, math.ceil(min_panel / max(1, min(height, width))))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def side_by_side_frames(
    clips: list[Tensor],
    labels: list[str],
    training_frames: int | None = None,
    *,
    min_panel: int = MIN_PANEL,
    caption: str | None = None,
) -> list[Image.Image]:
    """One RGB image per frame: the clips next to each other, labelled, with a frame counter.

    Each clip is scaled up by an integer factor with nearest-neighbour sampling (pixels stay sharp
    squares) so that every panel is at least ``min_panel`` pixels. Frames past ``training_frames``
    get a note that the teacher never saw clips that long; ``caption`` is added to the footer.
    """
    if len(clips) != len(labels) or not clips:
        raise ValueError(f"clips and labels must be non-empty and match; got {len(clips)} and {len(labels)}")
    arrays = [to_uint8_frames(c) for c in clips]
    frames, h, w = arrays[0].shape[:3]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"clips must share one shape; got {[tuple(a.shape) for a in arrays]}")
    scale = panel_scale(h, w, min_panel)
    label_font, footer_font = _font(LABEL_SIZE), _font(FOOTER_SIZE)
    label_height, footer_height = LABEL_SIZE + 10, FOOTER_SIZE + 10
    panel_w, panel_h = w * scale, h * scale
    width = len(arrays) * panel_w + (len(arrays) - 1) * GAP
    height = label_height + panel_h + footer_height
    images = []
    for t in range(frames):
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for i, (array, label) in enumerate(zip(arrays, labels, strict=True)):
            x = i * (panel_w + GAP)
            tile = Image.fromarray(array[t]).resize((panel_w, panel_h), Image.NEAREST)
            canvas.paste(tile, (x, label_height))
            draw.text((x + 4, 4), label, fill=(235, 235, 235), font=label_font)
        note = f"frame {t + 1}/{frames}"
        if training_frames is not None and t >= training_frames:
            note += f"  (beyond the {training_frames}-frame training length)"
        if caption:
            note += f"  ·  {caption}"
        draw.text((4, label_height + panel_h + 4), note, fill=(210, 210, 130), font=footer_font)
        images.append(canvas)
    return images


def write_gif(images: list[Image.Image], path: str | os.PathLike[str], fps: float = 8.0) -> Path:
    """An endlessly looping GIF, written atomically (:func:`rehyat.atomic.atomic_write`)."""
    return atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        ),
    )


def mp4_available() -> bool:
    """Whether PyAV (``av``, e.g. installed with ComfyUI) can be imported to write MP4 files."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def write_mp4(images: list[Image.Image], path: str | os.PathLike[str], fps: int = 8) -> Path | None:
    """An H.264 MP4 of ``images`` when PyAV (``av``) is available (written atomically), else None."""
    if not mp4_available():
        return None
    import av

    def write(tmp: Path) -> None:
        width, height = images[0].size
        container = av.open(str(tmp), "w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
            for image in images:
                rgb = np.ascontiguousarray(np.asarray(image)[: stream.height, : stream.width])
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()

    return atomic_write(path, write)


def plot_time_memory(measurements: list[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    """Two panels — seconds and working memory (MiB) of one model evaluation vs clip length.

    ``seconds`` is the median over the row's repeats; when a row lists them (``seconds_runs``) the
    plot shows their range as an error bar, so a noisy single run cannot pass for a trend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    repeats = max((m.get("repeats", 1) for m in measurements), default=1)
    for name, style in (("teacher", "o-"), ("rehyat", "s-")):
        rows = sorted((m for m in measurements if m["model"] == name), key=lambda m: m["frames"])
        lengths = [m["frames"] for m in rows]
        seconds = [m["seconds"] for m in rows]
        runs = [m.get("seconds_runs") or [m["seconds"]] for m in rows]
        spread = [[s - min(r) for s, r in zip(seconds, runs, strict=True)],
                  [max(r) - s for s, r in zip(seconds, runs, strict=True)]]
        axes[0].errorbar(lengths, seconds, yerr=spread, fmt=style, capsize=3, label=_label(name))
        memory = [m["working_memory_mib"] for m in rows]
        if all(v is not None for v in memory):
            axes[1].plot(lengths, memory, style, label=_label(name))
    axes[0].set_ylabel(
        "seconds per model evaluation" + (f"\n(median of {repeats} runs, bars: range)" if repeats > 1 else "")
    )
    axes[1].set_ylabel("peak working memory (MiB)")
    for ax in axes:
        ax.set_xlabel("clip length (frames)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return written


def _label(name: str) -> str:
    return "teacher (softmax, all frames)" if name == "teacher" else "ReHyAt (recurrent, chunk by chunk)"
