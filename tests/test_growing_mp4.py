"""rehyat.video.growing_mp4: a fragmented H.264 .mp4 that grows per chunk and equals a one-shot encode."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

import rehyat.video.growing_mp4 as growing_mp4
from rehyat.video import GrowingMp4Writer, encode_mp4, pyav_available, read_mp4_frames

FPS = 16


@pytest.fixture
def pyav():
    return pytest.importorskip("av", reason="PyAV (`pip install av`) encodes and decodes the .mp4 files")


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def synthetic_video(frames: int = 15, height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth moving colour gradient with a soft-edged red square sliding across: (T, H, W, 3) uint8."""
    t = np.arange(frames, dtype=np.float64)[:, None, None]  # (T, 1, 1)
    y = np.arange(height, dtype=np.float64)[None, :, None]  # (1, H, 1)
    x = np.arange(width, dtype=np.float64)[None, None, :]  # (1, 1, W)
    video = np.zeros((frames, height, width, 3))  # (T, H, W, 3)
    video[..., 0] = 0.5 + 0.4 * np.sin(2 * np.pi * (x + 2 * t) / width)
    video[..., 1] = 0.3 + 0.5 * y / height
    video[..., 2] = 0.5 + 0.3 * np.cos(2 * np.pi * (x + y - 3 * t) / (width + height))
    centre_y, centre_x = 14.0 + t, 16.0 + 2.0 * t
    mask = _smoothstep(8, 4, np.abs(y - centre_y)) * _smoothstep(8, 4, np.abs(x - centre_x))  # (T, H, W)
    video = video * (1 - mask[..., None]) + mask[..., None] * np.array([0.9, 0.2, 0.1])
    return np.round(video * 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def write_chunks(path, video, chunk: int = 5, **kwargs) -> None:
    with GrowingMp4Writer(path, FPS, **kwargs) as writer:
        for start in range(0, len(video), chunk):
            writer.append(video[start : start + chunk])
        assert writer.frames_written == len(video)


def test_chunked_appends_match_a_one_shot_encode(tmp_path, pyav):
    assert pyav_available()
    video = synthetic_video()  # (15, 48, 64, 3)
    write_chunks(tmp_path / "grown.mp4", video)
    assert encode_mp4(tmp_path / "once.mp4", video, FPS) == 15
    grown, once = read_mp4_frames(tmp_path / "grown.mp4"), read_mp4_frames(tmp_path / "once.mp4")
    assert grown.shape == once.shape == (15, 48, 64, 3) and grown.dtype == np.uint8
    for i in range(15):
        assert psnr(grown[i], once[i]) >= 40.0, i
        assert psnr(grown[i], video[i]) >= 30.0, i

    with pyav.open(str(tmp_path / "grown.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == FPS
        pts = [frame.pts for frame in container.decode(video=0)]
    step = pts[1] - pts[0]
    assert step > 0 and pts == [i * step for i in range(15)]  # pts = frame index, exactly: no drop / dup


def test_file_is_readable_while_it_grows(tmp_path, pyav):
    video = synthetic_video()
    path = tmp_path / "grown.mp4"
    snapshots = []
    with GrowingMp4Writer(path, FPS) as writer:
        for start in (0, 5, 10):
            writer.append(video[start : start + 5])
            snapshots.append(path.read_bytes())
    final = read_mp4_frames(path)
    sizes = [len(snapshot) for snapshot in snapshots]
    assert sizes == sorted(set(sizes)) and sizes[-1] < path.stat().st_size

    partial_path = tmp_path / "after_first_append.mp4"
    partial_path.write_bytes(snapshots[0])  # a copy of what was on disk after the first append, before close
    partial = read_mp4_frames(partial_path)
    assert 1 <= len(partial) <= 5
    np.testing.assert_array_equal(partial, final[: len(partial)])
    for k, snapshot in enumerate(snapshots):
        assert path.read_bytes()[: len(snapshot)] == snapshot, k  # append-only: earlier bytes never rewritten


def test_refuses_bad_arguments_by_name(tmp_path, pyav):
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="path .*existing.mp4.* already exists"):
        GrowingMp4Writer(existing, FPS)
    with pytest.raises(FileExistsError, match="path"):
        encode_mp4(existing, synthetic_video(2), FPS)
    assert existing.read_bytes() == b"keep me"

    for fps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"fps must be an integer >= 1"):
            GrowingMp4Writer(tmp_path / "bad_fps.mp4", fps)
    for crf in (-1, 52):
        with pytest.raises(ValueError, match=r"crf must be an integer in \[0, 51\]"):
            GrowingMp4Writer(tmp_path / "bad_crf.mp4", FPS, crf=crf)
    assert not (tmp_path / "bad_fps.mp4").exists() and not (tmp_path / "bad_crf.mp4").exists()

    path = tmp_path / "checked.mp4"
    video = synthetic_video(4)
    with GrowingMp4Writer(path, FPS) as writer:
        writer.append(video[:2])
        with pytest.raises(
            ValueError, match=r"frames: chunk size 48x62 .* differs from the first chunk's 48x64"
        ):
            writer.append(video[2:, :, :62])
        nan_chunk = torch.full((2, 48, 64, 3), 0.5)
        nan_chunk[1, 3, 4, 0] = float("nan")
        with pytest.raises(ValueError, match="frames: frame 1 of this chunk holds NaN"):
            writer.append(nan_chunk)
        with pytest.raises(ValueError, match=r"frames must have shape \(t, H, W, 3\)"):
            writer.append(video[0])  # rank 3
        with pytest.raises(ValueError, match=r"frames must have shape \(t, H, W, 3\)"):
            writer.append(video[..., :2])
        with pytest.raises(ValueError, match="frames must be uint8 .* got dtype torch.int64"):
            writer.append(torch.zeros(1, 48, 64, 3, dtype=torch.int64))
        writer.append(video[2:])  # the refused chunks left the writer usable
        assert writer.frames_written == 4
    assert writer.closed and read_mp4_frames(path).shape == (4, 48, 64, 3)
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(video)


def test_float_input_equals_rounded_uint8_input(tmp_path, pyav):
    video = synthetic_video(6)  # (6, 48, 64, 3) uint8
    write_chunks(tmp_path / "uint8.mp4", video, chunk=3)
    write_chunks(tmp_path / "torch_float.mp4", torch.from_numpy(video).float() / 255, chunk=3)
    write_chunks(tmp_path / "numpy_float.mp4", video.astype(np.float64) / 255, chunk=3)
    write_chunks(tmp_path / "torch_uint8.mp4", torch.from_numpy(video), chunk=3)
    reference = read_mp4_frames(tmp_path / "uint8.mp4")
    for name in ("torch_float", "numpy_float", "torch_uint8"):
        np.testing.assert_array_equal(read_mp4_frames(tmp_path / f"{name}.mp4"), reference, err_msg=name)


def test_odd_size_is_padded_by_edge_replication(tmp_path, pyav):
    video = synthetic_video(4, height=48, width=64)[:, :47, :63]  # (4, 47, 63, 3)
    with GrowingMp4Writer(tmp_path / "odd.mp4", FPS) as writer:
        assert writer.size is None
        writer.append(video[:2])
        writer.append(video[2:])
        assert writer.size == (48, 64)
    assert encode_mp4(tmp_path / "odd_once.mp4", video, FPS) == 4
    decoded = read_mp4_frames(tmp_path / "odd.mp4")
    assert decoded.shape == (4, 48, 64, 3)  # 1 px taller and wider than the input, as documented
    np.testing.assert_array_equal(decoded, read_mp4_frames(tmp_path / "odd_once.mp4"))
    padded = np.pad(video, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")  # what the encoder was given
    for i in range(4):
        assert psnr(decoded[i, :47, :63], video[i]) >= 30.0, i
        assert psnr(decoded[i], padded[i]) >= 30.0, i


def test_failure_midway_leaves_a_valid_prefix(tmp_path, pyav, monkeypatch):
    video = synthetic_video(10)
    path = tmp_path / "broken.mp4"
    writer = GrowingMp4Writer(path, FPS)
    writer.append(video[:5])
    real, calls = growing_mp4._video_frame, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("encoder exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(growing_mp4, "_video_frame", failing)
    with pytest.raises(OSError, match="encoder exploded"):
        writer.append(video[5:])
    assert writer.closed and writer.frames_written == 7
    writer.close()  # idempotent
    decoded = read_mp4_frames(path)
    assert len(decoded) == 7
    for i in range(7):
        assert psnr(decoded[i], video[i]) >= 30.0, i


def test_module_imports_without_pyav_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    spec = importlib.util.spec_from_file_location("growing_mp4_without_av", growing_mp4.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pyav_available() is False
    with pytest.raises(RuntimeError, match="pip install av"):
        module.GrowingMp4Writer(tmp_path / "x.mp4", FPS)
    with pytest.raises(RuntimeError, match="pip install av"):
        module.encode_mp4(tmp_path / "y.mp4", synthetic_video(1), FPS)
    with pytest.raises(RuntimeError, match="pip install av"):
        module.read_mp4_frames(tmp_path / "z.mp4")
    assert not (tmp_path / "x.mp4").exists()
