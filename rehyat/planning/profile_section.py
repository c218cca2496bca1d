"""The memory plan in the Profile node's report: the planner's numbers for the profiled model and clip."""

from __future__ import annotations

from typing import Any

from ..config import ConversionConfig, HybridAttentionConfig
from ..profiling.presets import WanShape
from .models import plan_model_for_shape
from .plan import PlanRequest, format_plan, plan


def profile_memory_plan(shape: WanShape, *, width: int, height: int, video_frames: int, chunk_frames: int,
                        overlap_frames: int, gpu_memory_gib: float, weights: str, steps: int,
                        cfg: float) -> tuple[dict[str, Any], str]:
    """``(plan JSON, plan table)`` of ``python -m rehyat plan`` for ``shape`` (Wan2.1 VAE strides); a
    length that is not 1 + 4k is floored as ComfyUI's Wan latent nodes floor it."""
    video_frames = 1 + 4 * ((max(video_frames, 1) - 1) // 4)
    attention = HybridAttentionConfig(chunk_frames=chunk_frames, overlap_frames=overlap_frames)
    request = PlanRequest(plan_model_for_shape(shape), gpu_memory_gib, weights, width, height, video_frames,
                          steps, cfg, conversion=ConversionConfig(attention=attention))
    result = plan(request)
    return result, format_plan(result)
