"""The demo's panels and pictures, on real converted teachers: generation, judging, videos, timing."""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys

import numpy
import pytest
import torch
from demo_support import needs_teacher
from PIL import Image

from rehyat.demo.media import LABEL_SIZE, panel_scale, plot_time_memory, side_by_side_frames
from rehyat.demo.memory import measure_lengths_in_child
from rehyat.demo.panels import LABELS, generate_panels, judge_panels, write_panel_videos
from rehyat.models.wan_rehyat import load_phi, phi_parameters
from rehyat.teacher.evaluate import score_clip
from rehyat.teacher.model import ASSETS, SamplingConfig, load_teacher

pytestmark = needs_teacher
PHI = ASSETS / "teacher_phi.safetensors"
PROMPT = "a green square and a magenta circle bounce"


@pytest.fixture(scope="module")
def panels():
    """Teacher clips and two converted teachers' clips (the shipped φ, and that φ perturbed)."""
    if not PHI.is_file():
        pytest.skip("no shipped φ")
    teacher = load_teacher()
    first = copy.deepcopy(teacher)
    load_phi(first.dit, PHI)
    second = copy.deepcopy(first)
    with torch.no_grad():
        for param in phi_parameters(second.dit):
            param.add_(0.05 * torch.randn_like(param))
    sampling = SamplingConfig(steps=2)
    clips, seconds = generate_panels(
        teacher, {"student": first, "stage1": second}, PROMPT, 3, [5, 8], sampling, progress=False
    )
    return teacher, clips, seconds


def test_every_panel_is_generated_from_the_same_noise_and_judged_by_the_evaluator(panels):
    teacher, clips, seconds = panels
    assert set(clips) == {5, 8} and all(set(c) == {"teacher", "student", "stage1"} for c in clips.values())
    for length, by_panel in clips.items():
        for pixels in by_panel.values():
            assert pixels.shape == (3, length, 32, 32) and torch.isfinite(pixels).all()
        assert all(seconds[length][name] > 0 for name in by_panel)
    again = teacher.generate(PROMPT, 8, 3, sampling=SamplingConfig(steps=2))
    assert torch.equal(again, clips[8]["teacher"])  # deterministic per seed
    judged = judge_panels(clips, PROMPT, teacher.config.clip, chunk_frames=3)
    for name in ("teacher", "student", "stage1"):
        for length in (5, 8):
            entry = judged[name][str(length)]
            direct = score_clip(clips[length][name], PROMPT, teacher.config.clip, 3).to_dict()
            for key in ("presence", "blank_frames", "spurious_frames", "kind_correct", "continuous_pairs"):
                assert entry[key] == direct[key], key  # one detector: the evaluator's
            assert entry["seam_ratio"] == direct["seam_ratio"] or direct["seam_ratio"] in (None, float("inf"))
            assert set(entry["presence"]) == {"green", "magenta"}
            assert ("psnr_vs_teacher_db" in entry) == (name != "teacher")
    with pytest.raises(ValueError, match="teacher"):
        generate_panels(teacher, {"teacher": teacher}, PROMPT, 0, [2], SamplingConfig(steps=1))


def test_panels_are_labelled_and_scaled_up_with_nearest_neighbour(panels):
    _, clips, _ = panels
    names = list(clips[8])
    images = side_by_side_frames([clips[8][n] for n in names], [LABELS[n] for n in names], training_frames=6)
    scale = panel_scale(32, 32)
    assert scale * 32 >= 384 and len(images) == 8
    width, height = images[0].size
    assert width >= 3 * 384 and height >= 384
    array = torch.from_numpy(numpy.asarray(images[0]).astype("int64"))  # (H, W, 3)
    top = LABEL_SIZE + 10  # panels start below the label strip
    tile = array[top : top + 32 * scale, : 32 * scale].reshape(32, scale, 32, scale, 3)
    assert (tile == tile[:, :1, :, :1]).all()  # every source pixel → one flat scale × scale block
    assert len(torch.unique(tile[:, 0, :, 0].reshape(-1, 3), dim=0)) > 4  # and the picture is there
    with pytest.raises(ValueError, match="match"):
        side_by_side_frames([clips[8]["teacher"]], ["a", "b"])


def test_videos_are_written_and_a_missing_pyav_is_said(panels, tmp_path):
    _, clips, _ = panels
    logged: list[str] = []
    written = write_panel_videos(clips[5], tmp_path / "side_by_side", training_frames=4, log=logged.append)
    assert written["gif"] == "side_by_side.gif" and Image.open(tmp_path / "side_by_side.gif").n_frames == 5
    try:
        import av  # noqa: F401

        assert written["mp4"] == "side_by_side.mp4" and (tmp_path / "side_by_side.mp4").stat().st_size > 0
    except ImportError:
        assert written["mp4"] is None and any("skipped side_by_side.mp4" in line for line in logged)
    # Without PyAV (import blocked in a fresh process): the GIF still comes, one line says the MP4 did not.
    script = (
        "import sys; sys.modules['av'] = None\n"
        "import torch\n"
        "from rehyat.demo.panels import write_panel_videos\n"
        "clip = torch.rand(3, 3, 32, 32) * 2 - 1\n"
        f"print(write_panel_videos({{'teacher': clip, 'student': clip}}, {str(tmp_path / 'no_av')!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert "skipped no_av.mp4: PyAV is not installed" in done.stdout
    assert (tmp_path / "no_av.gif").is_file() and not (tmp_path / "no_av.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_time_memory_sweep_reports_medians_over_repeats_with_progress(tmp_path):
    if not PHI.is_file():
        pytest.skip("no shipped φ")
    logged: list[str] = []
    rows = measure_lengths_in_child(
        {"teacher_dir": str(ASSETS), "phi": str(PHI), "lengths": [4, 2], "threads": 1,
         "prompt": PROMPT, "repeats": 3},
        log=logged.append,
    )
    assert [(r["model"], r["frames"]) for r in rows] == [
        ("teacher", 2), ("rehyat", 2), ("teacher", 4), ("rehyat", 4)
    ]
    for row in rows:
        assert row["repeats"] == 3 and len(row["seconds_runs"]) == 3
        assert row["seconds"] == statistics.median(row["seconds_runs"])
    assert [line.strip() for line in logged] == [f"{n} frames: 3 timed runs per model" for n in (2, 4)]
    plot = plot_time_memory(rows, tmp_path / "time_memory.png", "test")
    assert Image.open(plot).size[0] > 0
