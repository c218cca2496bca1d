"""Video comparison metrics: PSNR, SSIM, temporal flicker and the error at chunk boundaries (pure torch).

Clips are ``(T, H, W, C)`` tensors with values in ``[0, data_range]`` — ComfyUI's IMAGE layout,
one frame per row. Everything is computed in fp64 on the clips' device.

Chunk boundaries: ReHyAt chunks *latent* frames (``chunk_frames`` = Tc of them per chunk). Wan's
VAE maps latent frame 0 to video frame 0 and latent frame ``j ≥ 1`` to the ``temporal_factor``
(= 4) video frames ``4(j−1)+1 … 4j``, so the chunk starting at latent frame ``s > 0`` starts at
video frame ``4(s−1)+1`` (:func:`chunk_start_frames`). A seam is the pair of video frames either
side of such a start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import require_int
from .video_latent import WAN_TIME_STRIDE

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_clip(clip: Tensor, name: str) -> None:
    if not isinstance(clip, Tensor) or clip.ndim != 4 or clip.shape[0] < 1:
        shape = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
        raise ValueError(f"{name} must be a clip tensor (T, H, W, C) with T ≥ 1; got {shape}")
    if not clip.is_floating_point():
        raise ValueError(f"{name} must be a floating-point clip; got {clip.dtype}")


def _check_pair(a: Tensor, b: Tensor) -> None:
    _check_clip(a, "clip a")
    _check_clip(b, "clip b")
    if a.shape != b.shape:
        raise ValueError(
            f"the two clips must have the same frames and size (T, H, W, C); got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def mse_per_frame(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error of each frame ``(T,)`` (fp64)."""
    _check_pair(a, b)
    diff = a.double() - b.double()  # (T, H, W, C)
    return diff.square().flatten(1).mean(dim=1)


def _psnr(mse: Tensor, data_range: float) -> Tensor:
    return 10.0 * torch.log10(data_range**2 / mse)  # mse = 0 gives +inf


def psnr_per_frame(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR (dB) of each frame ``(T,)``; identical frames give ``inf``."""
    return _psnr(mse_per_frame(a, b), data_range)


def psnr_clip(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """PSNR (dB) of the whole clip: from the MSE over all frames (not the mean of per-frame PSNRs)."""
    return float(_psnr(mse_per_frame(a, b).mean(), data_range))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def ssim_window_size(height: int, width: int) -> int:
    """The Gaussian window used for frames of this size: 11, or the largest odd size that fits."""
    size = min(SSIM_WINDOW, height, width)
    return size if size % 2 else size - 1


def ssim_per_frame(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM of each frame ``(T,)`` (Wang et al. 2004), averaged over channels.

    Gaussian window 11×11, σ = 1.5 (smaller for frames under 11 pixels, see
    :func:`ssim_window_size`), K1 = 0.01, K2 = 0.03, population statistics, "valid" positions only
    (no padding) — the settings of scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``.
    """
    _check_pair(a, b)
    t, h, w, c = a.shape
    size = ssim_window_size(h, w)
    if size < 1:
        raise ValueError(f"frames of {h}×{w} pixels are too small for SSIM")
    window = _gaussian_window(size, SSIM_SIGMA, a.device).expand(c, 1, size, size)  # (C, 1, k, k)
    x = a.double().permute(0, 3, 1, 2)  # (T, C, H, W)
    y = b.double().permute(0, 3, 1, 2)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, window, groups=c)  # (T, C, H-k+1, W-k+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)  # (T,)


def ssim_clip(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM over the frames of the clip."""
    return float(ssim_per_frame(a, b, data_range).mean())


def frame_differences(clip: Tensor) -> Tensor:
    """Mean absolute change between consecutive frames ``(T−1,)``: entry ``t`` is frame t → t+1."""
    _check_clip(clip, "clip")
    x = clip.double()
    return (x[1:] - x[:-1]).abs().flatten(1).mean(dim=1)


def temporal_flicker(clip: Tensor) -> float:
    """Temporal flicker of a clip: the mean absolute change between consecutive frames (0 for T = 1)."""
    diffs = frame_differences(clip)
    return float(diffs.mean()) if diffs.numel() else 0.0


def latent_to_video_frame(latent_frame: int, temporal_factor: int = WAN_TIME_STRIDE) -> int:
    """First video frame decoded from latent frame ``latent_frame`` (Wan's causal VAE layout)."""
    if latent_frame < 0 or temporal_factor < 1:
        raise ValueError(
            f"latent_frame must be ≥ 0 and temporal_factor ≥ 1; got {latent_frame}, {temporal_factor}"
        )
    return 0 if latent_frame == 0 else (latent_frame - 1) * temporal_factor + 1


def chunk_start_frames(
    num_video_frames: int, chunk_frames: int, temporal_factor: int = WAN_TIME_STRIDE
) -> list[int]:
    """Video frames where a latent chunk after the first begins (each is a seam with the frame before).

    Chunk ``c`` starts at latent frame ``c · chunk_frames``; see :func:`latent_to_video_frame`.
    Starts at or past ``num_video_frames`` are dropped.
    """
    require_int("chunk_frames", chunk_frames, low=1)
    require_int("temporal_factor", temporal_factor, low=1)
    starts = []
    latent = chunk_frames
    while (frame := latent_to_video_frame(latent, temporal_factor)) < num_video_frames:
        starts.append(frame)
        latent += chunk_frames
    return starts


@dataclass(frozen=True)
class SeamReport:
    """Error at chunk boundaries against the rest of the clip.

    Attributes:
        starts: video frames where a chunk begins (after the first chunk).
        boundary_error: mean per-frame MSE (a vs b) over the frames either side of a seam.
        other_error: mean per-frame MSE over all other frames (nan if there are none).
        boundary_jump_a, boundary_jump_b: mean absolute frame-to-frame change across the seams, per
            clip; ``other_jump_a`` / ``other_jump_b``: the same over all other transitions.
    """

    starts: tuple[int, ...]
    boundary_error: float
    other_error: float
    boundary_jump_a: float
    other_jump_a: float
    boundary_jump_b: float
    other_jump_b: float

    @property
    def error_ratio(self) -> float:
        """``boundary_error / other_error`` (> 1: seams are worse than the rest)."""
        return _ratio(self.boundary_error, self.other_error)


def _ratio(x: float, y: float) -> float:
    if math.isnan(x) or math.isnan(y):
        return math.nan
    if y == 0:
        return 1.0 if x == 0 else math.inf
    return x / y


def _mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def seam_report(
    a: Tensor, b: Tensor, chunk_frames: int, temporal_factor: int = WAN_TIME_STRIDE
) -> SeamReport:
    """Per-frame error and frame-to-frame jumps at chunk boundaries vs elsewhere (see :class:`SeamReport`).

    With no boundary inside the clip the boundary figures are nan.
    """
    errors = mse_per_frame(a, b)  # (T,)
    t = a.shape[0]
    starts = chunk_start_frames(t, chunk_frames, temporal_factor)
    at_seam = torch.zeros(t, dtype=torch.bool, device=errors.device)
    seam_step = torch.zeros(max(t - 1, 0), dtype=torch.bool, device=errors.device)
    for start in starts:
        at_seam[start - 1 : start + 1] = True
        seam_step[start - 1] = True  # the transition start-1 → start
    jumps_a, jumps_b = frame_differences(a), frame_differences(b)
    return SeamReport(
        starts=tuple(starts),
        boundary_error=_mean(errors, at_seam),
        other_error=_mean(errors, ~at_seam),
        boundary_jump_a=_mean(jumps_a, seam_step),
        other_jump_a=_mean(jumps_a, ~seam_step),
        boundary_jump_b=_mean(jumps_b, seam_step),
        other_jump_b=_mean(jumps_b, ~seam_step),
    )
