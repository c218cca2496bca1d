"""rehyat.metrics against naive, obviously-correct references (loops over pixels, frames and windows)."""

from __future__ import annotations

import math

import pytest
import torch

from rehyat.metrics import (
    chunk_start_frames,
    frame_differences,
    latent_to_video_frame,
    mse_per_frame,
    psnr_clip,
    psnr_per_frame,
    seam_report,
    ssim_clip,
    ssim_per_frame,
    ssim_window_size,
    temporal_flicker,
)


def clip(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noisy(reference, seed, amount=0.1):
    return (reference + amount * clip(reference.shape, seed) - amount / 2).clamp(0, 1)


def naive_mse(a, b):
    t, h, w, c = a.shape
    out = []
    for f in range(t):
        total = 0.0
        for y in range(h):
            for x in range(w):
                for ch in range(c):
                    total += (float(a[f, y, x, ch]) - float(b[f, y, x, ch])) ** 2
        out.append(total / (h * w * c))
    return out


def naive_ssim_frame(a, b, size, sigma=1.5):
    """SSIM of one frame (H, W, C): explicit Gaussian-weighted sums over every valid window."""
    half = (size - 1) / 2
    g = [math.exp(-((i - half) ** 2) / (2 * sigma**2)) for i in range(size)]
    weights = [[g[i] * g[j] for j in range(size)] for i in range(size)]
    norm = sum(map(sum, weights))
    c1, c2 = 0.01**2, 0.03**2
    h, w, channels = a.shape
    values = []
    for ch in range(channels):
        for y0 in range(h - size + 1):
            for x0 in range(w - size + 1):
                mx = my = sxx = syy = sxy = 0.0
                for i in range(size):
                    for j in range(size):
                        wt = weights[i][j] / norm
                        p, q = float(a[y0 + i, x0 + j, ch]), float(b[y0 + i, x0 + j, ch])
                        mx += wt * p
                        my += wt * q
                        sxx += wt * p * p
                        syy += wt * q * q
                        sxy += wt * p * q
                vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
                numerator = (2 * mx * my + c1) * (2 * cov + c2)
                values.append(numerator / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def test_mse_and_psnr_match_the_naive_reference():
    a = clip((3, 5, 4, 3), 0)
    b = noisy(a, 1)
    expected = naive_mse(a, b)
    assert mse_per_frame(a, b).tolist() == pytest.approx(expected, rel=1e-12)
    assert psnr_per_frame(a, b).tolist() == pytest.approx([10 * math.log10(1 / m) for m in expected])
    assert psnr_clip(a, b) == pytest.approx(10 * math.log10(1 / (sum(expected) / 3)))
    assert psnr_clip(a, b, data_range=255.0) == pytest.approx(10 * math.log10(255**2 / (sum(expected) / 3)))
    assert psnr_clip(a, a) == math.inf and psnr_per_frame(a, a).isinf().all()


def test_ssim_matches_the_naive_windowed_reference():
    a = clip((2, 13, 14, 3), 2)
    b = noisy(a, 3, 0.3)
    got = ssim_per_frame(a, b)
    for f in range(2):
        assert float(got[f]) == pytest.approx(naive_ssim_frame(a[f], b[f], 11), rel=1e-9)
    assert ssim_clip(a, b) == pytest.approx(float(got.mean()))
    assert ssim_clip(a, a) == pytest.approx(1.0)
    assert ssim_clip(a, noisy(a, 4, 0.05)) > ssim_clip(a, noisy(a, 4, 0.5))


def test_ssim_on_frames_smaller_than_the_window():
    assert ssim_window_size(6, 9) == 5 and ssim_window_size(64, 64) == 11 and ssim_window_size(8, 20) == 7
    a = clip((1, 6, 9, 1), 5)
    b = noisy(a, 6, 0.3)
    assert float(ssim_per_frame(a, b)[0]) == pytest.approx(naive_ssim_frame(a[0], b[0], 5), rel=1e-9)


def test_flicker_is_the_mean_absolute_frame_change():
    a = clip((4, 3, 2, 3), 7)
    naive = [sum(abs(float(a[t + 1, y, x, c]) - float(a[t, y, x, c]))
                 for y in range(3) for x in range(2) for c in range(3)) / 18 for t in range(3)]
    assert frame_differences(a).tolist() == pytest.approx(naive)
    assert temporal_flicker(a) == pytest.approx(sum(naive) / 3)
    assert temporal_flicker(a[:1]) == 0.0
    still = a[:1].expand(5, -1, -1, -1)
    assert temporal_flicker(still) == 0.0


def naive_chunk_starts(num_video_frames, chunk_frames, factor):
    """Label every video frame with its latent frame's chunk; a start is where the label changes."""
    def latent_of(v):
        return 0 if v == 0 else (v - 1) // factor + 1

    chunk = [latent_of(v) // chunk_frames for v in range(num_video_frames)]
    return [v for v in range(1, num_video_frames) if chunk[v] != chunk[v - 1]]


@pytest.mark.parametrize(("frames", "tc", "factor"), [(81, 3, 4), (17, 2, 4), (9, 1, 4), (5, 3, 4),
                                                       (10, 3, 1), (33, 5, 4), (1, 1, 4)])
def test_chunk_starts_match_the_frame_by_frame_labelling(frames, tc, factor):
    assert chunk_start_frames(frames, tc, factor) == naive_chunk_starts(frames, tc, factor)


def test_latent_to_video_frame_and_errors():
    assert [latent_to_video_frame(j) for j in range(4)] == [0, 1, 5, 9]
    assert chunk_start_frames(81, 3) == [9, 21, 33, 45, 57, 69]  # 21 latent frames = 7 chunks
    with pytest.raises(ValueError, match="chunk_frames must be an integer ≥ 1; got 0"):
        chunk_start_frames(9, 0)
    with pytest.raises(ValueError, match="temporal_factor"):
        chunk_start_frames(9, 1, 0)
    with pytest.raises(ValueError, match="same frames and size"):
        psnr_clip(clip((2, 4, 4, 3), 0), clip((3, 4, 4, 3), 0))
    with pytest.raises(ValueError, match=r"clip a must be a clip tensor \(T, H, W, C\)"):
        psnr_clip(torch.zeros(4, 4, 3), torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="floating-point"):
        temporal_flicker(torch.zeros(2, 2, 2, 3, dtype=torch.uint8))


def test_seam_report_matches_a_naive_split():
    a = clip((17, 4, 4, 3), 8)
    b = noisy(a, 9, 0.05)
    b[5:7] = noisy(a[5:7], 10, 0.6)  # a bad seam around the start of chunk 2 (video frame 5, Tc=1)
    report = seam_report(a, b, chunk_frames=1)
    starts = naive_chunk_starts(17, 1, 4)
    assert report.starts == tuple(starts) == (1, 5, 9, 13)
    errors = naive_mse(a, b)
    seam_frames = sorted({f for s in starts for f in (s - 1, s)})
    others = [f for f in range(17) if f not in seam_frames]
    assert report.boundary_error == pytest.approx(sum(errors[f] for f in seam_frames) / len(seam_frames))
    assert report.other_error == pytest.approx(sum(errors[f] for f in others) / len(others))
    assert report.error_ratio > 1
    jumps = frame_differences(b).tolist()
    assert report.boundary_jump_b == pytest.approx(sum(jumps[s - 1] for s in starts) / len(starts))
    rest = [j for i, j in enumerate(jumps) if i + 1 not in starts]
    assert report.other_jump_b == pytest.approx(sum(rest) / len(rest))


def test_seam_report_of_a_single_chunk_has_no_boundary_figures():
    a = clip((5, 4, 4, 3), 1)
    report = seam_report(a, noisy(a, 2), chunk_frames=3)
    assert report.starts == () and math.isnan(report.boundary_error) and math.isnan(report.error_ratio)
    assert report.other_error > 0
    identical = seam_report(a, a, chunk_frames=1)
    assert identical.error_ratio == 1.0  # 0 / 0 at the seams and elsewhere: no difference
