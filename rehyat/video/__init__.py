"""Video files: a growing, player-readable H.264 ``.mp4`` writer (:mod:`rehyat.video.growing_mp4`)."""

from .growing_mp4 import (
    MAX_CRF,
    MOVFLAGS,
    GrowingMp4Writer,
    encode_mp4,
    pyav_available,
    read_mp4_frames,
)

__all__ = [
    "MAX_CRF",
    "MOVFLAGS",
    "GrowingMp4Writer",
    "encode_mp4",
    "pyav_available",
    "read_mp4_frames",
]
