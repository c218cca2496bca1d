"""ReHyAt Compare node in real ComfyUI: labelled side-by-side frames and the metrics report."""

from __future__ import annotations

import pytest
import torch
from comfy_support import requires_comfyui
from nodes_support import node_class, pack_module, run_node

pytestmark = requires_comfyui


def frames(seed, t=9, h=24, w=20):
    return torch.rand((t, h, w, 3), generator=torch.Generator().manual_seed(seed))


STATS = {"seconds": 12.5, "peak_memory_mib": 812.0, "device": "cpu", "order": "sweep", "chunks": 3,
         "state_store_mib": 1.5}


def test_schema():
    schema = node_class("ReHyAtCompare").define_schema()
    assert schema.category == "ReHyAt/analysis" and len(schema.description) > 40
    assert all(i.tooltip for i in schema.inputs)
    optional = {i.id for i in schema.inputs if i.optional}
    assert optional == {"latent_a", "latent_b"}


def test_side_by_side_keeps_both_clips_under_rendered_labels():
    a, b = frames(0), frames(1)
    image, _ = run_node("ReHyAtCompare", images_a=a, images_b=b, label_a="Wan2.1", label_b="ReHyAt",
                        chunk_frames=1, temporal_factor=4)
    band = image.shape[1] - a.shape[1]
    gap = image.shape[2] - 2 * a.shape[2]
    assert image.shape[0] == 9 and image.shape[3] == 3 and band >= 14 and gap > 0
    assert torch.equal(image[:, band:, :20], a) and torch.equal(image[:, band:, 20 + gap:], b)
    labels = image[0, :band]
    assert labels[:, :20].max() > 0.5 and labels[:, 20 + gap:].max() > 0.5  # text was drawn on both
    other, _ = run_node("ReHyAtCompare", images_a=a, images_b=b, label_a="A", label_b="ReHyAt",
                        chunk_frames=1, temporal_factor=4)
    assert not torch.equal(other[0, :band, :20], labels[:, :20])
    assert torch.equal(other[0, :band, 20 + gap:], labels[:, 20 + gap:])
    assert torch.equal(image[1:, :band], labels.expand(8, -1, -1, -1))


def test_report_has_clip_and_frame_metrics_seams_and_run_stats():
    metrics = pack_module("rehyat.metrics")
    a = frames(0)
    b = (a + 0.05 * frames(2) - 0.025).clamp(0, 1)
    _, report = run_node("ReHyAtCompare", images_a=a, images_b=b, label_a="Wan2.1", label_b="ReHyAt",
                         chunk_frames=1, temporal_factor=4, latent_a={"samples": torch.zeros(1)},
                         latent_b={"samples": torch.zeros(1), "rehyat_stats": STATS})
    lines = report.splitlines()
    assert f"PSNR (clip, from the mean MSE): {metrics.psnr_clip(a, b):.2f} dB" in lines
    assert f"SSIM (clip, mean over frames): {metrics.ssim_clip(a, b):.4f}" in lines
    assert f"Wan2.1 {metrics.temporal_flicker(a):.5f}" in report
    assert f"ReHyAt {metrics.temporal_flicker(b):.5f}" in report
    assert "chunks start at video frames [1, 5]" in report  # Tc=1: latent frames 1, 2 → video 1, 5
    seams = metrics.seam_report(a, b, 1, 4)
    assert f"(ratio {seams.error_ratio:.2f})" in report
    table = lines[lines.index("frame  PSNR(dB)  SSIM") + 1:]
    assert len(table) == 9
    psnr = metrics.psnr_per_frame(a, b)
    assert table[5].split()[:2] == ["5", f"{float(psnr[5]):.2f}"] and table[5].endswith("← chunk start")
    assert "run Wan2.1: no time/memory figures" in report
    assert ("run ReHyAt: seconds=12.5, peak_memory_mib=812.0, device=cpu, order=sweep, chunks=3, "
            "state_store_mib=1.5") in report


def test_identical_clips_and_bad_inputs():
    a = frames(3, t=5)
    _, report = run_node("ReHyAtCompare", images_a=a, images_b=a.clone(), label_a="x", label_b="y",
                         chunk_frames=3, temporal_factor=4)
    assert "inf (identical)" in report and "SSIM (clip, mean over frames): 1.0000" in report
    assert "none (the clip is one chunk)" in report
    with pytest.raises(ValueError, match="images_a and images_b must have the same frame count and size"):
        run_node("ReHyAtCompare", images_a=a, images_b=frames(3, t=4), label_a="x", label_b="y",
                 chunk_frames=3, temporal_factor=4)
