"""Node: compare two clips (e.g. Wan2.1 and ReHyAt from one seed) side by side, with metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw, ImageFont

from ..rehyat.metrics import (
    chunk_start_frames,
    psnr_clip,
    psnr_per_frame,
    seam_report,
    ssim_clip,
    ssim_per_frame,
    temporal_flicker,
)
from ..rehyat.video_latent import WAN_TIME_STRIDE
from .conversion_widgets import chunk_frames_input

STATS_KEY = "rehyat_stats"
"""LATENT dict key where the sampler nodes leave their run's figures (pinned)."""
STATS_FIELDS = ("seconds", "peak_memory_mib", "device", "order", "chunks", "state_store_mib")
GAP = 4  # pixels between the two clips


def side_by_side(a: torch.Tensor, b: torch.Tensor, label_a: str, label_b: str) -> torch.Tensor:
    """``(T, H, W, C)`` ×2 → ``(T, band + H, 2W + GAP, C)``: the clips next to each other under labels."""
    t, h, w, c = a.shape
    band = max(14, h // 10)
    out = torch.zeros(t, band + h, 2 * w + GAP, c, dtype=a.dtype, device=a.device)
    out[:, band:, :w] = a
    out[:, band:, w + GAP:] = b
    labels = torch.from_numpy(_label_band(band, w, label_a, label_b, c)).to(out)  # (band, 2W+GAP, C)
    out[:, :band] = labels
    return out


def _label_band(band: int, width: int, label_a: str, label_b: str, channels: int) -> np.ndarray:
    """``(band, 2W + GAP, C)`` white text on black, each label clipped to the width of its clip."""
    try:
        font = ImageFont.load_default(size=max(8, band - 4))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    halves = []
    for text in (label_a, label_b):
        image = Image.new("L", (width, band), 0)
        ImageDraw.Draw(image).text((2, 1), text, fill=255, font=font)
        halves.append(np.asarray(image, dtype=np.float32) / 255.0)  # (band, W)
    gray = np.concatenate([halves[0], np.zeros((band, GAP), np.float32), halves[1]], axis=1)
    return np.repeat(gray[:, :, None], channels, axis=2)


def run_stats(latent: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``rehyat_stats`` a sampler node left in a LATENT, or None."""
    if not latent:
        return None
    stats = latent.get(STATS_KEY)
    return dict(stats) if isinstance(stats, Mapping) else None


def _db(value: float) -> str:
    return "inf (identical)" if math.isinf(value) else f"{value:.2f} dB"


def _figure(value: float, digits: int = 5) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def compare_report(a: torch.Tensor, b: torch.Tensor, label_a: str, label_b: str, chunk_frames: int,
                   temporal_factor: int, stats_a: Mapping[str, Any] | None,
                   stats_b: Mapping[str, Any] | None) -> str:
    """The text output of :class:`ReHyAtCompare`."""
    seams = seam_report(a, b, chunk_frames, temporal_factor)
    psnrs, ssims = psnr_per_frame(a, b).tolist(), ssim_per_frame(a, b).tolist()
    lines = [
        f"{label_a} vs {label_b}: {a.shape[0]} frames of {a.shape[2]}×{a.shape[1]}",
        f"PSNR (clip, from the mean MSE): {_db(psnr_clip(a, b))}",
        f"SSIM (clip, mean over frames): {ssim_clip(a, b):.4f}",
        f"temporal flicker (mean |frame t+1 − frame t|): {label_a} {temporal_flicker(a):.5f}, "
        f"{label_b} {temporal_flicker(b):.5f}",
        f"chunk seams: Tc={chunk_frames} latent frames × VAE factor {temporal_factor} → chunks start "
        f"at video frames {list(seams.starts) or 'none (the clip is one chunk)'}",
        f"  MSE at seam frames {_figure(seams.boundary_error, 6)} vs elsewhere "
        f"{_figure(seams.other_error, 6)} (ratio {_figure(seams.error_ratio, 2)})",
        f"  jump across seams vs elsewhere: {label_a} {_figure(seams.boundary_jump_a)} vs "
        f"{_figure(seams.other_jump_a)}, {label_b} {_figure(seams.boundary_jump_b)} vs "
        f"{_figure(seams.other_jump_b)}",
    ]
    for label, stats in ((label_a, stats_a), (label_b, stats_b)):
        if stats is None:
            lines.append(f"run {label}: no time/memory figures (connect the sampler's LATENT output)")
        else:
            shown = ", ".join(f"{k}={stats[k]}" for k in STATS_FIELDS if k in stats)
            lines.append(f"run {label}: {shown}")
    lines.append("frame  PSNR(dB)  SSIM")
    starts = set(seams.starts)
    for index, (p, s) in enumerate(zip(psnrs, ssims, strict=True)):
        mark = "  ← chunk start" if index in starts else ""
        lines.append(f"{index:5d}  {'inf' if math.isinf(p) else f'{p:7.2f}':>8}  {s:.4f}{mark}")
    return "\n".join(lines)


class ReHyAtCompare(io.ComfyNode):
    """Two clips side by side with labels, plus PSNR / SSIM / flicker / seam figures and run stats."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs: two IMAGE batches, labels, chunking and optional LATENTs with run stats."""
        return io.Schema(
            node_id="ReHyAtCompare",
            display_name="ReHyAt Compare",
            category="ReHyAt/analysis",
            description=(
                "Puts two decoded clips (e.g. stock Wan2.1 and ReHyAt from one seed) side by side with "
                "labels and reports PSNR and SSIM per clip and per frame, the temporal flicker of each clip, "
                "the error at chunk boundaries against the rest (the seams), and each run's time and peak "
                "memory when the sampler left them in its LATENT output."
            ),
            inputs=[
                io.Image.Input("images_a",
                               tooltip="Reference clip (e.g. stock Wan2.1), frames as an IMAGE batch."),
                io.Image.Input("images_b",
                               tooltip="Clip to compare (e.g. ReHyAt): same frame count and size."),
                io.String.Input("label_a", default="Wan2.1", tooltip="Label drawn above the left clip."),
                io.String.Input("label_b", default="ReHyAt", tooltip="Label drawn above the right clip."),
                chunk_frames_input("The compared ReHyAt run's ", " Here: where its chunk seams are."),
                io.Int.Input("temporal_factor", default=WAN_TIME_STRIDE, min=1, max=64,
                             tooltip="Video frames per latent frame of the VAE (Wan: 4; latent frame 0 is "
                                     "video frame 0, latent frame j ≥ 1 is video frames 4j−3…4j)."),
                io.Latent.Input("latent_a", optional=True,
                                tooltip="Optional: the LATENT the sampler of clip A returned, for its time "
                                        "and peak memory (ReHyAt samplers record them)."),
                io.Latent.Input("latent_b", optional=True,
                                tooltip="Optional: the LATENT the sampler of clip B returned."),
            ],
            outputs=[io.Image.Output(display_name="side_by_side",
                                     tooltip="Labelled frames, A left, B right."),
                     io.String.Output(display_name="report", tooltip="Metrics per clip and per frame.")],
        )

    @classmethod
    def execute(cls, images_a, images_b, label_a, label_b, chunk_frames, temporal_factor, latent_a=None,
                latent_b=None) -> io.NodeOutput:
        """Compose the side-by-side batch and the report."""
        if images_a.shape != images_b.shape:
            raise ValueError(
                f"images_a and images_b must have the same frame count and size (frames, height, width, "
                f"channels); got {tuple(images_a.shape)} and {tuple(images_b.shape)} — decode both runs "
                "at the same length and resolution"
            )
        chunk_start_frames(images_a.shape[0], chunk_frames, temporal_factor)  # validates the two widgets
        report = compare_report(images_a, images_b, label_a, label_b, chunk_frames, temporal_factor,
                                run_stats(latent_a), run_stats(latent_b))
        return io.NodeOutput(side_by_side(images_a, images_b, label_a, label_b), report)


NODES = [ReHyAtCompare]
