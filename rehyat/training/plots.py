"""Loss-curve pictures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes


def loss_curve_png_bytes(
    curves: Mapping[str, Sequence[float]],
    *,
    title: str = "training loss",
    ylabel: str = "loss",
    log_scale: bool = True,
    smooth: int = 0,
) -> bytes:
    """PNG of one line per curve (x = step); empty curves are listed but not drawn.

    Args:
        curves: label -> values per step.
        title, ylabel: text on the figure.
        log_scale: logarithmic y axis when every value is > 0.
        smooth: if > 1, also draw a running mean over this many steps (the raw curve faded).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    positive = True
    for label, values in curves.items():
        values = [float(v) for v in values]
        if not values:
            axes.plot([], [], label=f"{label} (no data)")
            continue
        positive = positive and all(v > 0 and math.isfinite(v) for v in values)
        steps = np.arange(1, len(values) + 1)
        if smooth > 1 and len(values) >= smooth:
            line = axes.plot(steps, values, alpha=0.3)[0]
            kernel = np.ones(smooth) / smooth
            axes.plot(
                steps[smooth - 1 :],
                np.convolve(values, kernel, mode="valid"),
                color=line.get_color(),
                label=label,
            )
        else:
            axes.plot(steps, values, label=label)
    if log_scale and positive and any(len(v) for v in curves.values()):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_curve_png(curves: Mapping[str, Sequence[float]], path: str | os.PathLike[str], **kwargs) -> Path:
    """Write :func:`loss_curve_png_bytes` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(Path(path), loss_curve_png_bytes(curves, **kwargs))


def loss_curve_image(curves: Mapping[str, Sequence[float]], **kwargs) -> np.ndarray:
    """The same picture as a ``(H, W, 3)`` uint8 RGB array (e.g. for a ComfyUI ``IMAGE``)."""
    from PIL import Image

    with Image.open(io.BytesIO(loss_curve_png_bytes(curves, **kwargs))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
