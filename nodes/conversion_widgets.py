"""The conversion widgets (placement, Tc, To, causal) every node that takes them declares alike.

One declaration each: the default comes from :mod:`rehyat.config`, the tooltip says the same thing
on every node; ``prefix`` / ``suffix`` add what is particular to one node (e.g. "Ignored with a φ").
No nodes here (no ``NODES``).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..rehyat.config import PLACEMENTS, ConversionConfig, HybridAttentionConfig

_CONVERSION = ConversionConfig()
_ATTENTION = HybridAttentionConfig()


def _tip(prefix: str, text: str, suffix: str) -> str:
    return f"{prefix}{text}{suffix}"


def placement_input(prefix: str = "", suffix: str = "") -> io.Combo.Input:
    """``placement``: which blocks a block count selects."""
    return io.Combo.Input(
        "placement", options=list(PLACEMENTS), default=_CONVERSION.placement,
        tooltip=_tip(prefix, "which blocks — the first N, the last N, or N evenly spaced (always including "
                             "the last).", suffix),
    )


def chunk_frames_input(prefix: str = "", suffix: str = "") -> io.Int.Input:
    """``chunk_frames``: Tc in latent frames."""
    return io.Int.Input(
        "chunk_frames", default=_ATTENTION.chunk_frames, min=1, max=1000,
        tooltip=_tip(prefix, f"Tc, latent frames per chunk attended with softmax (paper: "
                             f"{_ATTENTION.chunk_frames}; one latent frame = 4 video frames).", suffix),
    )


def overlap_frames_input(prefix: str = "", suffix: str = "") -> io.Int.Input:
    """``overlap_frames``: To in latent frames."""
    return io.Int.Input(
        "overlap_frames", default=_ATTENTION.overlap_frames, min=0, max=1000,
        tooltip=_tip(prefix, f"To, earlier latent frames each chunk also sees with softmax (paper: "
                             f"{_ATTENTION.overlap_frames}).", suffix),
    )


def causal_input(prefix: str = "", suffix: str = "") -> io.Boolean.Input:
    """``causal``: linear attention to earlier frames only."""
    return io.Boolean.Input(
        "causal", default=_ATTENTION.causal,
        tooltip=_tip(prefix, "linear attention to earlier frames only (needed for 'recurrent' and the "
                             "Chunked Sampler).", suffix),
    )
