"""``python -m rehyat demo`` on the shipped teacher with tiny settings writes every artefact."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from rehyat.cli import main
from rehyat.demo.pipeline import PHI_FILE, DemoConfig
from rehyat.teacher.model import ASSETS, teacher_files_present
from rehyat.weights import load_phi_weights

pytestmark = pytest.mark.skipif(
    not teacher_files_present(ASSETS),
    reason="rehyat/assets has no teacher (python -m rehyat train-teacher --export rehyat/assets)",
)
TINY = [
    "--length",
    "6",
    "--steps",
    "2",
    "--measure-lengths",
    "3,6",
    "--chunk-frames",
    "2",
    "--overlap-frames",
    "1",
    "--threads",
    "1",
]


def test_short_demo_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--output", str(out), "--distill-steps", "2", "--distill-trajectory-steps", "2", *TINY])
        == 0
    )
    printed = capsys.readouterr().out
    assert "fidelity vs teacher" in printed and "attention mass beyond" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["length"] == 6 and metrics["chunk_frames"] == 2 and metrics["overlap_frames"] == 1
    assert metrics["distillation"]["steps"] == 2
    assert set(metrics["fidelity_vs_teacher"]) >= {"psnr_db", "ssim", "psnr_per_frame_db", "temporal_flicker"}
    assert len(metrics["fidelity_vs_teacher"]["psnr_per_frame_db"]) == 6
    rows = metrics["per_length"]
    assert {(r["model"], r["frames"]) for r in rows} == {
        (m, n) for m in ("teacher", "rehyat") for n in (3, 6)
    }
    assert all(r["seconds"] > 0 for r in rows)
    shares = metrics["attention_temporal_structure"]["mean_over_blocks"]
    assert 0 <= shares["beyond_window"] <= 1
    gif = Image.open(out / "side_by_side.gif")
    assert gif.n_frames == 6 and gif.size[0] > 1.5 * gif.size[1]  # two 128-px tiles side by side
    assert Image.open(out / "time_memory.png").size[0] > 0
    if metrics["mp4"] is not None:  # PyAV present (ComfyUI installs it)
        assert (out / "side_by_side.mp4").stat().st_size > 0
    phi = load_phi_weights(out / "phi.safetensors")
    assert phi.config.attention.chunk_frames == 2 and phi.blocks == (0, 1, 2, 3)


@pytest.mark.skipif(not (ASSETS / PHI_FILE).is_file(), reason=f"no pre-distilled φ shipped ({PHI_FILE})")
def test_no_distill_uses_the_shipped_phi(tmp_path):
    out = tmp_path / "demo"
    shipped = load_phi_weights(ASSETS / PHI_FILE).config.attention
    args = ["--length", "4", "--steps", "1", "--measure-lengths", "4", "--threads", "1"]
    assert main(["demo", "--output", str(out), "--no-distill", *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chunk_frames"] == shipped.chunk_frames and metrics["distillation"]["source"].endswith(
        PHI_FILE
    )
    with pytest.raises(SystemExit):
        main(
            [
                "demo",
                "--output",
                str(out),
                "--no-distill",
                "--chunk-frames",
                str(shipped.chunk_frames + 1),
                *args,
            ]
        )


def test_bad_options_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(tmp_path), "--prompt", "a purple triangle", *TINY])
    assert "purple" in capsys.readouterr().err
    with pytest.raises(ValueError, match="length"):
        DemoConfig(length=0)
    with pytest.raises(ValueError, match="distill_steps"):
        DemoConfig(distill_steps=0)
