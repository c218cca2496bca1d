"""Tiny teacher and recipe shared by the student tests (real classes, tiny sizes)."""

from __future__ import annotations

import torch

from rehyat.models.wan import WanDiTConfig
from rehyat.student import StudentRecipe
from rehyat.teacher.model import SamplingConfig, Teacher, TeacherConfig
from rehyat.teacher.shapes import ClipSpec
from rehyat.teacher.text import TextEncoderConfig

TINY = TeacherConfig(
    dit=WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, in_dim=12, out_dim=12, text_dim=32),
    text=TextEncoderConfig(width=16, max_shapes=2, out_dim=32),
    clip=ClipSpec(frames=6, size=16, min_radius=2.0, max_radius=3.0),
    sampling=SamplingConfig(steps=2),
)
TINY_RECIPE = StudentRecipe(
    stage1_steps=3, stage1_prompts=3, stage1_trajectory_steps=2,
    stage2_steps=2, stage2_batch=2, stage2_clips=4, stage2_data="clips",  # on-policy: its own test
)
TINY_ONPOLICY = StudentRecipe(
    stage1_steps=3, stage1_prompts=3, stage1_trajectory_steps=2, stage2_batch=2, stage2_data="trajectories",
    stage2_steps=4, stage2_trajectory_prompts=1, stage2_trajectory_refresh=2, stage2_frames=6,
)


def make_tiny_teacher() -> Teacher:
    """A tiny Wan-shaped teacher with every weight perturbed (a fresh Wan's output head is zero)."""
    torch.manual_seed(0)
    teacher = Teacher(TINY).eval()
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return teacher
