"""An H.264 ``.mp4`` that grows as chunks of frames arrive, so a player can open it mid-write.

:class:`GrowingMp4Writer` encodes each :meth:`~GrowingMp4Writer.append`-ed chunk with libx264 and muxes
it at once into a *fragmented* MP4 (``movflags=frag_keyframe+empty_moov+default_base_moof`` plus
``frag_every_frame``): an empty ``moov`` header first, then one ``moof``/``mdat`` fragment per frame. Any
prefix of such a file that ends on a fragment boundary is a playable video, so a player (or
:func:`read_mp4_frames` on a copy of the bytes) can show the frames written so far while sampling goes on.

Why the chunked file holds exactly the frames of a one-shot encode (:func:`encode_mp4`):

* the encoder is one libx264 session for the whole file, fed frame ``i`` with ``pts = i`` in
  ``time_base = 1/fps``; it never sees where one ``append`` ended and the next began (it is flushed only in
  :meth:`~GrowingMp4Writer.close`), so its bitstream does not depend on the chunking;
* ``tune=zerolatency`` (no B-frames, no lookahead, sliced threads) makes it emit each frame's packet as soon
  as the frame goes in — needed for the file to grow — and keeps the output deterministic;
* the container only wraps packets; fragmenting changes no decoded pixel.

When the bytes land: the MP4 muxer writes a fragment when the *next* packet arrives (FFmpeg's muxer API
has a flush call PyAV does not expose), and ``flush_packets=1`` plus ``file.flush()`` push every written
byte to the OS. So after ``append`` returns, every frame of it but the newest is on disk (readable by other
processes); the newest one lands with the next ``append`` or with ``close``. ``os.fsync`` is not called:
the OS page cache is what other readers on the machine see.

Colour: RGB is converted to yuv420p with BT.709 matrix, limited (TV) range, and the stream is tagged BT.709
so players and :func:`read_mp4_frames` convert back with the same matrix.

PyAV (``pip install av``) is optional: this module imports without it; :func:`pyav_available` tells, and
constructing a writer (or calling :func:`encode_mp4` / :func:`read_mp4_frames`) without it raises a
``RuntimeError`` saying how to install it.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from types import TracebackType
from typing import Any

import numpy as np
import torch

try:  # PyAV is optional: only encoding / decoding needs it.
    import av
except ImportError:  # pragma: no cover - exercised only where PyAV is missing
    av = None

__all__ = [
    "MAX_CRF",
    "MOVFLAGS",
    "GrowingMp4Writer",
    "encode_mp4",
    "pyav_available",
    "read_mp4_frames",
]

MAX_CRF = 51
"""Largest libx264 CRF (worst quality); 0 is lossless (High 4:4:4 Predictive profile: fewer players)."""

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+frag_every_frame"
"""Fragmented MP4: empty ``moov`` up front, then one self-describing fragment per frame."""

_CODEC = "libx264"
_PIX_FMT = "yuv420p"
_PRESET = "medium"
_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709 == 1
_RANGE_MPEG = 1  # AVCOL_RANGE_MPEG: limited ("TV") range
_FLOAT_DTYPES_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INSTALL_HINT = "PyAV is not installed — `pip install av` to write / read .mp4 files"


def pyav_available() -> bool:
    """True when PyAV (``import av``) is importable, i.e. mp4 encoding / decoding works."""
    return av is not None


def _require_pyav() -> Any:
    if av is None:
        raise RuntimeError(_INSTALL_HINT)
    return av


def _check_fps(fps: int) -> int:
    if isinstance(fps, bool) or not isinstance(fps, int | np.integer) or int(fps) < 1:
        raise ValueError(f"fps must be an integer >= 1 (frames per second), got {fps!r}")
    return int(fps)


def _check_crf(crf: int) -> int:
    if isinstance(crf, bool) or not isinstance(crf, int | np.integer) or not 0 <= int(crf) <= MAX_CRF:
        raise ValueError(
            f"crf must be an integer in [0, {MAX_CRF}] (libx264 quality, lower = better), got {crf!r}"
        )
    return int(crf)


def _check_frames(frames: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
    """Validate one chunk of frames without copying it; return ``(t, H, W)``.

    Raises ValueError naming ``frames`` for a wrong type, rank, channel count or dtype, or non-finite values.
    """
    if isinstance(frames, torch.Tensor):
        dtype_ok = frames.dtype == torch.uint8 or frames.dtype in _FLOAT_DTYPES_TORCH
        is_float = frames.is_floating_point()
    elif isinstance(frames, np.ndarray):
        dtype_ok = frames.dtype == np.uint8 or np.issubdtype(frames.dtype, np.floating)
        is_float = np.issubdtype(frames.dtype, np.floating)
    else:
        raise ValueError(
            f"frames must be a numpy array or torch tensor of shape (t, H, W, 3), got {type(frames).__name__}"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (t, H, W, 3) (rank 4, RGB last), got {tuple(frames.shape)}")
    if not dtype_ok:
        raise ValueError(f"frames must be uint8 (0..255) or float (0..1), got dtype {frames.dtype}")
    t, height, width = (int(n) for n in frames.shape[:3])
    if height < 1 or width < 1:
        raise ValueError(f"frames must have H, W >= 1, got shape {tuple(frames.shape)}")
    if is_float:
        for i in range(t):  # one frame at a time: no chunk-sized temporary
            frame = frames[i]  # (H, W, 3)
            finite = (
                bool(torch.isfinite(frame).all())
                if isinstance(frame, torch.Tensor)
                else bool(np.isfinite(frame).all())
            )
            if not finite:
                raise ValueError(f"frames: frame {i} of this chunk holds NaN or ±inf — refusing to encode it")
    return t, height, width


def _to_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """One (H, W, 3) frame → contiguous uint8 numpy; float is clamped to [0, 1] then ``round(x * 255)``."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach()
        if frame.is_floating_point():
            if frame.dtype in (torch.float16, torch.bfloat16):
                frame = frame.float()
            frame = (frame.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return np.ascontiguousarray(frame.cpu().numpy())  # (H, W, 3)
    if np.issubdtype(frame.dtype, np.floating):
        if frame.dtype == np.float16:
            frame = frame.astype(np.float32)
        frame = np.rint(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(frame)  # (H, W, 3)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) frame by edge replication to even H and W (yuv420p halves chroma both ways)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")  # (H', W', 3)
    return frame


def _open_exclusive(path: str | os.PathLike[str], what: str) -> io.BufferedWriter:
    try:
        return open(path, "xb")  # handed to PyAV; the caller closes it
    except FileExistsError:
        raise FileExistsError(
            f"path {os.fspath(path)!r} already exists — {what} never overwrites a file; pick a new name"
        ) from None


def _add_video_stream(container: Any, fps: int, crf: int, height: int, width: int) -> Any:
    """Add the libx264 stream with the settings shared by :class:`GrowingMp4Writer` and :func:`encode_mp4`."""
    stream = container.add_stream(_CODEC, rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = _PIX_FMT
    ctx = stream.codec_context
    ctx.time_base = Fraction(1, fps)
    ctx.colorspace = _BT709
    ctx.color_primaries = _BT709
    ctx.color_trc = _BT709
    ctx.color_range = _RANGE_MPEG
    # zerolatency: one packet per input frame at once (the file can grow); bitstream independent of chunking.
    ctx.options = {"crf": str(crf), "preset": _PRESET, "tune": "zerolatency"}
    return stream


def _video_frame(pyav: Any, frame: np.ndarray | torch.Tensor, pts: int, fps: int) -> Any:
    """One validated (H, W, 3) frame → a yuv420p BT.709 limited-range ``av.VideoFrame`` with ``pts``."""
    rgb = _pad_even(_to_uint8(frame))  # (H', W', 3) uint8
    video_frame = pyav.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=_PIX_FMT, dst_colorspace="ITU709", dst_color_range="MPEG"
    )
    video_frame.pts = pts
    video_frame.time_base = Fraction(1, fps)
    return video_frame


class GrowingMp4Writer:
    """Write an H.264 fragmented ``.mp4`` at ``path`` that grows with every :meth:`append`.

    The file is written **directly at** ``path`` (it is meant to be watched while it grows) and is created
    with exclusive creation (``open(path, "xb")``): an existing file is never overwritten
    (``FileExistsError``). After each ``append`` every frame of it but the newest is on disk as complete MP4
    fragments (the newest one follows with the next ``append`` or ``close``); :meth:`close` flushes the
    encoder and writes the trailer.

    Memory: only the chunk passed to ``append`` is held (converted one frame at a time); nothing accumulates.

    Odd sizes: yuv420p needs even width and height, so a frame with odd H and/or W is **padded** by one row
    and/or column replicating its last row / column: the file (and :func:`read_mp4_frames`) is then 1 px
    taller and/or wider than the input — crop ``[:H, :W]`` to get the input size back. :attr:`size` is the
    encoded size.

    Failure: if encoding or muxing fails midway, the writer closes the container (best effort) and the file,
    leaving what was written — a valid fragmented prefix — and re-raises. Validation errors (``ValueError``
    from a bad chunk) happen before anything is encoded and leave the writer usable. A writer closed without
    any frame leaves an empty (0-byte) file.

    Args:
        path: where to create the ``.mp4``; must not exist, its directory must.
        fps: frames per second, an integer >= 1 (``time_base = 1/fps``, frame ``i`` has ``pts = i``).
        crf: libx264 constant rate factor in [0, 51]; lower is better (10: visually lossless, large file).

    Raises:
        RuntimeError: PyAV is not installed (``pip install av``).
        ValueError: ``fps`` or ``crf`` out of range.
        FileExistsError: ``path`` exists.

    Example::

        with GrowingMp4Writer("out.mp4", fps=16) as writer:
            for chunk in chunks:  # each (t, H, W, 3) uint8, or float in [0, 1]
                writer.append(chunk)
    """

    def __init__(self, path: str | os.PathLike[str], fps: int, *, crf: int = 10) -> None:
        pyav = _require_pyav()
        self.fps = _check_fps(fps)
        self.crf = _check_crf(crf)
        self.path = os.fspath(path)
        self.frames_written = 0
        """Frames handed to the encoder so far (all of them are in the file once :meth:`close` returns)."""
        self._input_size: tuple[int, int] | None = None  # (H, W) of the first non-empty chunk
        self._stream: Any = None
        self._closed = False
        self._file = _open_exclusive(self.path, "GrowingMp4Writer")
        try:
            self._container = pyav.open(
                self._file,
                mode="w",
                format="mp4",
                options={"movflags": MOVFLAGS, "flush_packets": "1"},
            )
        except BaseException:
            self._file.close()
            os.unlink(self.path)  # the 0-byte file this call just created
            raise

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or a failed append closed the writer)."""
        return self._closed

    @property
    def size(self) -> tuple[int, int] | None:
        """Encoded (height, width) — the input size rounded up to even — or None before the first frame."""
        if self._input_size is None:
            return None
        height, width = self._input_size
        return height + height % 2, width + width % 2

    def append(self, frames: np.ndarray | torch.Tensor) -> None:
        """Encode a chunk of frames, mux its packets and flush the file so the bytes reach the OS.

        Args:
            frames: ``(t, H, W, 3)`` RGB, uint8 (numpy or torch) or float in [0, 1] (numpy or torch; clamped,
                then ``round(x * 255)``). H, W must match the earlier chunks; ``t = 0`` is a no-op.

        Raises:
            ValueError: wrong type / rank / dtype, non-finite values, or a size different from earlier chunks
                (the writer stays usable).
            RuntimeError: the writer is closed.
        """
        if self._closed:
            raise RuntimeError(f"GrowingMp4Writer({self.path!r}) is closed; cannot append")
        t, height, width = _check_frames(frames)
        if self._input_size is not None and (height, width) != self._input_size:
            h0, w0 = self._input_size
            raise ValueError(
                f"frames: chunk size {height}x{width} (H x W) differs from the first chunk's {h0}x{w0}; "
                "every append must have the same H, W"
            )
        if t == 0:
            return
        try:
            if self._stream is None:
                self._input_size = (height, width)
                enc_h, enc_w = self.size  # type: ignore[misc]
                self._stream = _add_video_stream(self._container, self.fps, self.crf, enc_h, enc_w)
            for i in range(t):  # one frame converted at a time
                video_frame = _video_frame(av, frames[i], self.frames_written, self.fps)
                self._container.mux(self._stream.encode(video_frame))
                self.frames_written += 1
            self._file.flush()
        except BaseException:
            self._abort()
            raise

    def close(self) -> None:
        """Flush the encoder, write the trailer and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
            self._container.close()
            self._file.flush()
        finally:
            self._file.close()

    def _abort(self) -> None:
        """Close after a failure, keeping the valid fragmented prefix on disk; never raises."""
        self._closed = True
        try:
            self._container.close()  # writes the pending fragment and the trailer when it can
        except Exception:  # the original error is what matters
            pass
        finally:
            self._file.close()

    def __enter__(self) -> GrowingMp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"GrowingMp4Writer({self.path!r}, fps={self.fps}, crf={self.crf}, "
            f"frames={self.frames_written}, {state})"
        )


def encode_mp4(
    path: str | os.PathLike[str], frames: np.ndarray | torch.Tensor, fps: int, crf: int = 10
) -> int:
    """Encode a whole ``(T, H, W, 3)`` clip in one go: the reference for :class:`GrowingMp4Writer`.

    Same libx264 settings, colour conversion, odd-size padding and input rules as the writer, but a plain
    (non-fragmented) MP4 with the index at the end — not readable until finished. Refuses an existing
    ``path`` like the writer does. Returns the number of frames encoded.

    Raises:
        RuntimeError: PyAV is not installed. ValueError: bad ``fps`` / ``crf`` / ``frames`` (see the writer).
        FileExistsError: ``path`` exists.
    """
    pyav = _require_pyav()
    fps, crf = _check_fps(fps), _check_crf(crf)
    t, height, width = _check_frames(frames)
    if t == 0:
        raise ValueError("frames: need at least one frame to encode, got t = 0")
    with _open_exclusive(path, "encode_mp4") as file:
        with pyav.open(file, mode="w", format="mp4") as container:
            stream = _add_video_stream(container, fps, crf, height + height % 2, width + width % 2)
            for i in range(t):
                container.mux(stream.encode(_video_frame(pyav, frames[i], i, fps)))
            container.mux(stream.encode(None))
    return t


def read_mp4_frames(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode every frame of the first video stream of ``path`` → ``(T, H, W, 3)`` uint8 RGB.

    Works on a growing fragmented file (or a copy of its bytes so far): it returns the frames of the complete
    fragments. The frames' colour tags (BT.709 for files written here) choose the YUV → RGB matrix. Holds the
    whole clip in memory.

    Raises:
        RuntimeError: PyAV is not installed. ValueError: ``path`` has no video stream.
    """
    pyav = _require_pyav()
    with pyav.open(os.fspath(path), mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"path {os.fspath(path)!r} holds no video stream")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]  # each (H, W, 3)
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(frames)  # (T, H, W, 3)
