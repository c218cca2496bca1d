"""Plots of a profile report (matplotlib, Agg backend): against video length, and against Tc.

:func:`length_figure` draws model TFLOPs, measured latency per evaluation and peak memory against the
video length; :func:`chunk_figure` one converted block's attention TFLOPs against Tc for every To,
with softmax and the uniform hybrids as horizontal lines (the paper's Fig. 4); :func:`summary_figure`
puts all four panels in one image (the node's output). :func:`figure_to_array` renders to RGB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _cases(report: dict[str, Any]) -> list[str]:
    return list(report["lengths"][0]["cases"]) if report["lengths"] else []


def _label(report: dict[str, Any], key: str) -> str:
    return report[key]["label"] if key in report else key


def draw_length_panel(ax, report: dict[str, Any], quantity: str) -> None:
    """One panel against video length: "model_tflops", "step_seconds" or "peak_memory_mib"."""
    titles = {"model_tflops": ("DiT TFLOPs per evaluation", "TFLOPs"),
              "step_seconds": ("measured latency per evaluation", "seconds"),
              "peak_memory_mib": ("measured peak memory", "MiB")}
    title, unit = titles[quantity]
    xs_all = [row["video_frames"] for row in report["lengths"]]
    drawn = 0
    for key in _cases(report):
        xs, ys = [], []
        for row, x in zip(report["lengths"], xs_all, strict=True):
            entry = row["cases"][key]
            source = entry if quantity == "model_tflops" else entry.get("measured", {})
            value = source.get(quantity)
            if value is not None:
                xs.append(x)
                ys.append(value)
        if xs:
            ax.plot(xs, ys, marker="o", label=_label(report, key))
            drawn += 1
    layers = [row["cases"][k].get("measured", {}).get("layers") for row in report["lengths"]
              for k in _cases(report)]
    layers = [n for n in layers if n]
    if quantity != "model_tflops" and layers:
        title += f" ({layers[0]}-block model)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("video frames")
    ax.set_ylabel(unit)
    if drawn:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "not measured\n(analytic only)", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def draw_chunk_panel(ax, report: dict[str, Any], quantity: str = "attention_tflops") -> None:
    """One converted block's ``quantity`` against Tc per To, with softmax / uniform hybrid lines."""
    for name, rows in report["chunk_sweep"].items():
        ax.plot([r["chunk_frames"] for r in rows], [r[quantity] for r in rows], marker="o",
                label=f"ReHyAt {name}")
    lines = ("softmax", *[k for k in report if k.startswith("uniform_hybrid_R")])
    for number, key in enumerate(lines):
        ax.axhline(report[key][quantity], linestyle="--" if number else "-", linewidth=1.2,
                   label=_label(report, key), color="black" if key == "softmax" else f"C{number + 2}")
    latent = report["latent"]
    size = f"{latent['frames']}×{latent['height']}×{latent['width']}"
    ax.set_title(f"one block's self-attention, latent {size}", fontsize=9)
    ax.set_xlabel("chunk size Tc (latent frames)")
    ax.set_ylabel("TFLOPs")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)


def length_figure(report: dict[str, Any]):
    """FLOPs, latency and memory against video length (three panels)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, quantity in zip(axes, ("model_tflops", "step_seconds", "peak_memory_mib"), strict=True):
        draw_length_panel(ax, report, quantity)
    fig.suptitle(f"{report['model']['name']}: cost against video length", fontsize=10)
    fig.tight_layout()
    return fig


def chunk_figure(report: dict[str, Any]):
    """Attention TFLOPs against Tc for every To (the paper's Fig. 4)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    draw_chunk_panel(ax, report)
    fig.tight_layout()
    return fig


def summary_figure(report: dict[str, Any]):
    """All four panels in one 2×2 figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    draw_length_panel(axes[0, 0], report, "model_tflops")
    draw_chunk_panel(axes[0, 1], report)
    draw_length_panel(axes[1, 0], report, "step_seconds")
    draw_length_panel(axes[1, 1], report, "peak_memory_mib")
    fig.suptitle(f"ReHyAt profile — {report['model']['name']}", fontsize=11)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` float32 array in [0, 1] and close it."""
    plt = _pyplot()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].astype(np.float32) / 255.0


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG atomically (temp file + rename) and close it."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
