"""Video ↔ Wan2.1 latent arithmetic: the one home of the VAE's strides.

The Wan VAE maps 1 + 4·k video frames to 1 + k latent frames and 8 × 8 pixels to one latent cell;
ComfyUI's Wan latent nodes floor any other size the same way (``(length - 1) // 4 + 1``, ``// 8``).
"""

from __future__ import annotations

from .config import require_int

WAN_LATENT_CHANNELS = 16
WAN_TIME_STRIDE = 4  # the Wan VAE: 1 + 4·k video frames → 1 + k latent frames
WAN_SPACE_STRIDE = 8  # 8 × 8 pixels per latent cell
WAN_PIXEL_MULTIPLE = 16  # Wan's 8× VAE + 2×2 patches: sizes a clip must be a multiple of


def latent_frame_count(video_frames: int) -> int:
    """Latent frames of ``video_frames`` video frames, floored as ComfyUI's Wan latent nodes do.

    81 → 21, 1 → 1, 0 → 0 (a context-window overlap of 0 frames stays 0).
    """
    return (video_frames - 1) // WAN_TIME_STRIDE + 1


def video_frame_count(latent_frames: int) -> int:
    """Video frames a ``latent_frames``-frame latent decodes to (21 → 81); inverse of
    :func:`latent_frame_count` on 1 + 4·k lengths."""
    return 1 + WAN_TIME_STRIDE * (latent_frames - 1)


def video_latent_shape(
    frames: int,
    height: int,
    width: int,
    channels: int = WAN_LATENT_CHANNELS,
    *,
    exact: bool = True,
) -> tuple[int, int, int, int]:
    """(C, T, H, W) of the Wan2.1 latent of a ``frames`` × ``height`` × ``width`` video.

    Args:
        exact: refuse sizes the VAE would floor (frames not 1 + 4k, sizes not multiples of 16);
            False floors them as ComfyUI's empty-latent nodes do.

    Raises:
        ValueError: (exact only) frames not 1 + 4k, or sizes not multiples of 16.
    """
    if exact:
        require_int("frames", frames, low=1)
        require_int("height", height, low=WAN_PIXEL_MULTIPLE)
        require_int("width", width, low=WAN_PIXEL_MULTIPLE)
        if (frames - 1) % WAN_TIME_STRIDE:
            raise ValueError(f"frames must be 1 + 4·k (e.g. 81, 49, 17); got {frames}")
        for name, size in (("height", height), ("width", width)):
            if size % WAN_PIXEL_MULTIPLE:
                raise ValueError(f"{name} must be a multiple of {WAN_PIXEL_MULTIPLE}; got {size}")
    return (
        channels,
        latent_frame_count(frames),
        height // WAN_SPACE_STRIDE,
        width // WAN_SPACE_STRIDE,
    )
