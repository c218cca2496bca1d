"""``python -m rehyat demo`` on the shipped teacher with tiny settings writes every artefact."""

from __future__ import annotations

import json
import statistics

import pytest
from demo_support import TINY, make_tiny_student, needs_teacher
from PIL import Image

from rehyat.cli import main
from rehyat.demo.pipeline import DemoConfig
from rehyat.student import LORA_FILE, PHI_FILE, student_files_present
from rehyat.weights import load_phi_weights

pytestmark = needs_teacher
PANELS = ("teacher", "student", "stage1")
JUDGED = {"seam_ratio", "blank_frames", "presence", "kind_correct", "spurious_frames", "continuous_pairs"}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("student"))


def check_panels(metrics: dict, lengths: tuple[int, ...]) -> None:
    """Every panel judged at every length with the evaluator's measures; the videos written."""
    assert set(metrics["panels"]) == set(PANELS)
    for panel in PANELS:
        assert set(metrics["panels"][panel]) == {str(n) for n in lengths}
        for n in lengths:
            entry = metrics["panels"][panel][str(n)]
            assert JUDGED <= set(entry) and entry["frames"] == n
            assert set(entry["presence"]) == {"red", "blue"}  # per prompted shape
            assert set(entry["passes"]) >= {"seam_ratio", "blank", "every_colour_present", "kind"}
            assert ("psnr_vs_teacher_db" in entry) == (panel != "teacher")
    assert set(metrics["videos"]) == {str(n) for n in lengths}


def test_retrain_runs_both_stages_live_and_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    live = ["--retrain", "--distill-steps", "2", "--distill-trajectory-steps", "2", "--finetune-steps", "1",
            "--finetune-data", "clips"]
    chunking = ["--chunk-frames", "2", "--overlap-frames", "1"]
    assert main(["demo", "--output", str(out), *live, *chunking, *TINY]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "fidelity vs teacher" in printed and "attention mass beyond" in printed
    assert "--retrain: training both stages live" in printed and "on one CPU core" in printed  # stated time
    assert "stage 1: distilling φ" in captured.err and "stage 2: fine-tuning" in captured.err  # progress bars
    assert "what a creator judges" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["length"] == 6 and metrics["chunk_frames"] == 2 and metrics["overlap_frames"] == 1
    assert metrics["distillation"]["steps"] == 2
    assert metrics["student"]["source"] == "retrained"
    assert metrics["student"]["report"]["recipe"]["stage2_steps"] == 1
    runs = list((out / "retrain_runs").iterdir())  # both stages checkpointed: a restart carries on
    assert len(runs) == 1 and (runs[0] / "stage1" / "run.json").is_file() and (runs[0] / "stage2").is_dir()
    assert f"checkpoints: {runs[0]}" in printed
    assert metrics["student"]["report"]["recipe"]["stage2_data"] == "clips"
    assert set(metrics["fidelity_vs_teacher"]) >= {"psnr_db", "ssim", "psnr_per_frame_db", "temporal_flicker"}
    assert len(metrics["fidelity_vs_teacher"]["psnr_per_frame_db"]) == 6
    for pinned in ("content", "generation", "shape_detection"):
        assert set(metrics[pinned]) >= {"teacher", "rehyat", "stage1"}
    check_panels(metrics, (6, 16))
    rows = metrics["per_length"]
    assert {(r["model"], r["frames"]) for r in rows} == {
        (m, n) for m in ("teacher", "rehyat") for n in (3, 6)
    }
    for row in rows:
        assert row["repeats"] == 2 and len(row["seconds_runs"]) == 2
        assert row["seconds"] == statistics.median(row["seconds_runs"]) > 0
    shares = metrics["attention_temporal_structure"]["mean_over_blocks"]
    assert 0 <= shares["beyond_window"] <= 1
    for name, frames in (("side_by_side.gif", 6), ("side_by_side_16_frames.gif", 16)):
        gif = Image.open(out / name)
        assert gif.n_frames == frames and gif.size[0] >= 3 * 384 and gif.size[1] >= 384  # 3 panels ≥ 384 px
    assert Image.open(out / "time_memory.png").size[0] > 0
    if metrics["mp4"] is not None:  # PyAV present (ComfyUI installs it)
        assert metrics["mp4"] == "side_by_side.mp4" and (out / "side_by_side.mp4").stat().st_size > 0
        assert (out / "side_by_side_16_frames.mp4").stat().st_size > 0
    else:
        assert "skipped side_by_side.mp4" in printed
    phi = load_phi_weights(out / "phi.safetensors")
    assert phi.config.attention.chunk_frames == 2 and phi.blocks == (0, 1, 2, 3)
    assert student_files_present(out)  # the trained student, reusable with --student-dir


def test_retrain_at_the_default_chunking_samples_at_the_recipes_sampling_overlap(tmp_path, capsys):
    """φ and the LoRA train at To = 1 and the demo's student samples at To = 3, as the shipped one;
    ``phi.safetensors`` records 3 and keeps the To stage 1 trained at as ``trained_conversion``."""
    out = tmp_path / "demo"
    live = ["--retrain", "--distill-steps", "2", "--distill-trajectory-steps", "2", "--finetune-steps", "1",
            "--finetune-data", "clips"]
    assert main(["demo", "--output", str(out), *live, *TINY]) == 0
    assert "Tc=3, To=3 (trained at To=1)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chunk_frames"] == 3 and metrics["overlap_frames"] == 3
    phi = load_phi_weights(out / "phi.safetensors")
    assert phi.config.attention.overlap_frames == 3
    assert phi.training["trained_conversion"]["attention"]["overlap_frames"] == 1
    assert load_phi_weights(out / PHI_FILE).config.attention.overlap_frames == 3  # the student's files


def test_default_uses_the_student_files_and_no_distill_still_works(tmp_path, capsys, student_dir):
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--student-dir", str(student_dir), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the shipped student" in printed and "distilling" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    shipped = load_phi_weights(student_dir / PHI_FILE).config.attention
    assert metrics["chunk_frames"] == shipped.chunk_frames
    assert metrics["distillation"]["source"].endswith(PHI_FILE)
    assert metrics["student"]["source"] == "shipped"
    assert set(metrics["student"]["files"]) == {PHI_FILE, LORA_FILE}
    check_panels(metrics, (6, 16))
    assert main([*args, "--no-distill"]) == 0  # kept: the shipped student is what it always meant
    assert "replacing the earlier demo output" in capsys.readouterr().out


@pytest.mark.skipif(not student_files_present(), reason="the student's files are not shipped yet")
def test_default_demo_uses_the_shipped_student(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["source"] == "shipped" and metrics["chunk_frames"] == 3
    check_panels(metrics, (6, 16))


def test_output_folder_with_a_link_where_a_demo_file_goes_is_refused(tmp_path, capsys, student_dir):
    out = tmp_path / "demo"
    out.mkdir()
    precious = tmp_path / "precious.json"
    precious.write_text("{}")
    (out / "metrics.json").symlink_to(precious)
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(out), "--student-dir", str(student_dir), *TINY])
    assert "metrics.json is a link" in capsys.readouterr().err
    assert precious.read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_bad_options_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(tmp_path), "--prompt", "a purple triangle", *TINY])
    assert "purple" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--output", str(tmp_path / "o"), *TINY, "--measure-lengths", "0,3"])
    assert "rehyat demo: error: --measure-lengths must be" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="length"):
        DemoConfig(length=0)
    with pytest.raises(ValueError, match="distill_steps"):
        DemoConfig(distill_steps=0)
    with pytest.raises(ValueError, match="repeats"):
        DemoConfig(repeats=0)
