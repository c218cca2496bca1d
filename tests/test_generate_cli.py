"""``python -m rehyat generate`` and ``evaluate`` on the shipped teacher: arrays, determinism, refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from rehyat.cli import build_parser, main
from rehyat.student.generate import generate_video, to_uint8_frames
from rehyat.teacher.model import ASSETS, teacher_files_present

pytestmark = pytest.mark.skipif(
    not teacher_files_present(ASSETS), reason="rehyat/assets has no teacher (python -m rehyat train-teacher)"
)
PROMPT = "a red circle and a blue square collide"


def _generate(tmp_path, name, *extra):
    out = tmp_path / name
    assert (
        main(["generate", "--prompt", PROMPT, "--seed", "3", "--out", str(out), "--steps", "2", *extra]) == 0
    )
    return np.load(out)


def test_generate_writes_uint8_frames_identical_to_the_library(tmp_path, capsys):
    teacher = _generate(tmp_path, "t.npy", "--frames", "7", "--model", "teacher")
    assert teacher.dtype == np.uint8 and teacher.shape == (7, 32, 32, 3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shape"] == [7, 32, 32, 3]
    assert np.array_equal(teacher, generate_video("teacher", PROMPT, 3, 7, steps=2).numpy())
    assert np.array_equal(teacher, _generate(tmp_path, "t2.npy", "--frames", "7"))  # deterministic
    rehyat = _generate(tmp_path, "r.npy", "--frames", "7", "--model", "rehyat")
    assert rehyat.shape == teacher.shape and not np.array_equal(rehyat, teacher)
    assert np.array_equal(rehyat, generate_video("rehyat", PROMPT, 3, 7, steps=2).numpy())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "--prompt is empty.*colours: blue"),
        (["--prompt", "a purple circle"], "unknown words.*colours: blue"),
        (["--frames", "0"], "frames must be an integer from 1 to 1024"),
        (["--frames", "5000"], "frames must be an integer from 1 to 1024"),
        (["--seed", "-1"], "--seed must be"),
        (["--out", "clip.png"], "--out must name a .npy file"),
    ],
)
def test_generate_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "clip.npy"), *args])  # later flags win
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, error), error
    assert not (tmp_path / "clip.npy").exists()


def test_generate_never_overwrites(tmp_path, capsys):
    out = tmp_path / "clip.npy"
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", PROMPT, "--out", str(out), "--steps", "1"])
    assert out.read_bytes() == b"keep" and "exists" in capsys.readouterr().err


def test_generate_help_documents_every_option():
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    text = sub.format_help()
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            assert action.option_strings[0] in text
    for flag in ("--model", "--prompt", "--seed", "--frames", "--out"):
        assert flag in text


def test_generate_runs_as_a_fresh_process(tmp_path):
    out = tmp_path / "clip.npy"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rehyat",
            "generate",
            "--model",
            "rehyat",
            "--prompt",
            "a green square bounces",
            "--frames",
            "4",
            "--seed",
            "1",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (4, 32, 32, 3)


def test_uint8_conversion_maps_the_pixel_range():
    pixels = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    frames = to_uint8_frames(pixels)
    assert frames.shape == (4, 1, 1, 3) and frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]


def test_evaluate_command_prints_the_pooled_summary(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--clips", "2", "--frames", "4", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed["clips"] == 2 and set(printed["passes"]) >= {"presence", "spurious", "kind", "continuous"}
    assert len(saved["per_clip"]) == 2 and saved["per_clip"][0]["frames"] == 4
    with pytest.raises(SystemExit):
        main(["evaluate", "--clips", "2", "--out", str(out)])  # exists: refused
