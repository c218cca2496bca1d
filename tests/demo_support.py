"""Shared pieces of the demo tests: tiny options and a tiny real student made with the real recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehyat.teacher.model import ASSETS, teacher_files_present

needs_teacher = pytest.mark.skipif(
    not teacher_files_present(ASSETS),
    reason="rehyat/assets has no teacher (python -m rehyat train-teacher --export rehyat/assets)",
)

# Short clips, two sampling steps, a two-length sweep timed once: seconds, not minutes.
TINY = ["--length", "6", "--steps", "2", "--measure-lengths", "3,6", "--repeats", "2", "--threads", "1"]


def make_tiny_student(folder: Path) -> Path:
    """Both stages of :func:`rehyat.student.train_student` with tiny budgets, saved like the shipped files."""
    from rehyat.student import StudentRecipe, save_student, train_student
    from rehyat.teacher.model import load_teacher

    teacher = load_teacher()
    recipe = StudentRecipe(
        stage1_steps=2, stage1_trajectory_steps=2, stage2_steps=2, stage2_batch=1, stage2_clips=4,
        stage2_trajectory_prompts=1, stage2_frames=16,  # the shipped on-policy stage 2, one short trajectory
    )
    result = train_student(teacher, recipe, log=lambda line: None)
    save_student(result.stage1, result.student, folder, result.report)
    return folder


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m rehyat <args>`` in a fresh process, one CPU thread."""
    return subprocess.run(
        [sys.executable, "-m", "rehyat", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=600,
        check=False,
    )
