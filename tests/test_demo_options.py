"""``python -m rehyat demo`` refuses bad options up front, in one line naming the option, with the
demo's own usage (issue 19, item 10)."""

from __future__ import annotations

import os

import pytest
from demo_support import TINY, make_tiny_student, needs_teacher, run_cli

from rehyat.config import HybridAttentionConfig
from rehyat.demo.options import check_chunking, check_output_folder, check_prompt, max_chunk_frames
from rehyat.teacher.text import VOCABULARY
from rehyat.training.options import check_clip_length


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("student"))


def refused(done, option: str) -> str:
    """The one error line of a refused run; checks the exit code, the option and the demo's usage."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("usage: rehyat demo"), done.stderr  # the demo's usage, not the top level's
    assert "COMMAND" not in done.stderr
    last = lines[-1]
    assert last.startswith(f"rehyat demo: error: {option}") or f"argument {option}" in last, last
    assert "Traceback" not in done.stderr
    return last


@needs_teacher
def test_output_onto_a_file_under_a_file_or_too_long_is_refused(tmp_path):
    user_file = tmp_path / "keep.gif"
    user_file.write_bytes(b"mine")
    line = refused(run_cli("demo", "--output", str(user_file), *TINY), "--output")
    assert "is a file" in line
    line = refused(run_cli("demo", "--output", str(user_file / "sub"), *TINY), "--output")
    assert "is a file, not a folder" in line
    assert user_file.read_bytes() == b"mine"
    line = refused(run_cli("demo", "--output", str(tmp_path / ("x" * 300)), *TINY), "--output")
    assert "255 bytes" in line
    (tmp_path / "target").write_bytes(b"linked")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    line = refused(run_cli("demo", "--output", str(tmp_path / "link"), *TINY), "--output")
    assert "is a link" in line and (tmp_path / "target").read_bytes() == b"linked"


def test_output_where_nothing_can_be_written_is_refused(tmp_path):
    if os.geteuid() == 0:  # root writes through file modes: a pseudo file system refuses for real
        place = "/proc/rehyat-demo-test/out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        place = str(locked / "out")
    with pytest.raises(ValueError, match="^--output .*choose another place"):
        check_output_folder(place)
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert list(tmp_path.iterdir()) == ([tmp_path / "locked"] if os.geteuid() else [])


@needs_teacher
def test_empty_or_unknown_prompt_is_refused_with_the_vocabulary(tmp_path):
    out = str(tmp_path / "o")
    for prompt in ("", "   ", "a"):
        line = refused(run_cli("demo", "--output", out, "--prompt", prompt, *TINY), "--prompt")
        assert "colours: blue, cyan, green, magenta, red, yellow" in line and "shapes: circle, square" in line
    line = refused(run_cli("demo", "--output", out, "--prompt", "a purple star", *TINY), "--prompt")
    assert "purple" in line
    assert not (tmp_path / "o").exists()
    check_prompt("a red circle and a blue square collide", 2)
    with pytest.raises(ValueError, match="^--prompt is empty"):
        check_prompt("", 2)
    assert {"red", "circle", "square"} <= set(VOCABULARY)


@needs_teacher
def test_chunk_and_overlap_out_of_range_are_refused_before_any_work(tmp_path):
    out = tmp_path / "o"
    # the shipped student samples at To = 3; a live run of another chunking trains and samples at To = 1
    for extra, overlap in (([], 3), (["--retrain"], 1)):
        done = run_cli("demo", "--output", str(out), "--chunk-frames", "100", *extra, *TINY)
        line = refused(done, "--chunk-frames")
        assert "[1, 15]" in line and f"--overlap-frames {overlap}" in line and "16-frame" in line
        assert "stage 1" not in done.stdout + done.stderr and not out.exists()  # nothing trained or written
    line = refused(run_cli("demo", "--output", str(out), "--retrain", "--overlap-frames", "30", *TINY),
                   "--overlap-frames")
    assert "[0, 14]" in line and "--chunk-frames 3" in line
    line = refused(run_cli("demo", "--output", str(out), "--chunk-frames", "0", *TINY), "--chunk-frames")
    assert "≥ 1" in line


def test_the_stated_range_is_exactly_what_distillation_accepts():
    """check_chunking agrees with the distiller's own check at the teacher's 16-frame training length."""
    for chunk in range(1, 20):
        for overlap in range(0, 20):
            attention = HybridAttentionConfig(chunk_frames=chunk, overlap_frames=overlap)
            try:
                check_clip_length(16, attention)
                trains = True
            except ValueError:
                trains = False
            if trains:
                check_chunking(chunk, overlap, 16)
            else:
                with pytest.raises(ValueError, match="out of range"):
                    check_chunking(chunk, overlap, 16)
    assert max_chunk_frames(1, 16) == 15


@needs_teacher
def test_live_training_options_need_retrain(tmp_path, student_dir):
    out = tmp_path / "o"
    line = refused(run_cli("demo", "--output", str(out), "--distill-steps", "3", *TINY), "--distill-steps")
    assert "--retrain" in line
    line = refused(run_cli("demo", "--output", str(out), "--finetune-steps", "3", *TINY), "--finetune-steps")
    assert "--retrain" in line
    line = refused(run_cli("demo", "--output", str(out), "--retrain", "--no-distill", *TINY), "--no-distill")
    assert "contradict" in line
    students = ["--student-dir", str(student_dir)]
    done = run_cli("demo", "--output", str(out), *students, "--chunk-frames", "2", *TINY)
    line = refused(done, "--chunk-frames")
    assert "shipped student was trained with --chunk-frames 3" in line and "--retrain" in line
    line = refused(run_cli("demo", "--output", str(out), *students, "--overlap-frames", "1", *TINY),
                   "--overlap-frames")
    assert "shipped student samples with --overlap-frames 3" in line and "--retrain" in line
    refused(run_cli("demo", "--output", str(out), "--distill-steps", "0", *TINY), "--distill-steps")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(run_cli("demo", "--output", str(out), "--student-dir", str(empty), *TINY), "no shipped")
    assert "student_lora.safetensors" in line and "--retrain" in line
    assert not out.exists()
