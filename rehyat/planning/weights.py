"""Bytes of a model's weights in each storage format the planner accepts (``--weights``).

Bits per weight: fp16 / bf16 16; fp8 8 (ComfyUI's fp8 e4m3fn / e5m2 checkpoints; their per-tensor
scales are negligible); q8 8.5 and q4 4.5 (GGUF Q8_0 and Q4_0 blocks: 32 weights plus one fp16
scale). Every parameter is counted at the format's width (GGUF files keep biases and norms, < 0.1 %
of the parameters, wider — within the planner's tolerance). Activations are bf16 or fp16 in every
case (ComfyUI casts fp8 / quantised weights to the compute dtype per layer), so their element size
is 2 bytes.
"""

from __future__ import annotations

import math

from ..config import FeatureMapConfig
from ..feature_maps import feature_map_parameter_count
from ..profiling.presets import WanShape

WEIGHT_BITS: dict[str, float] = {"fp16": 16.0, "bf16": 16.0, "fp8": 8.0, "q8": 8.5, "q4": 4.5}
WEIGHT_FORMATS: tuple[str, ...] = tuple(WEIGHT_BITS)
ACTIVATION_BYTES = 2  # bf16 / fp16 activations on a GPU
PHI_BYTES_PER_PARAMETER = 4  # φ stays fp32 under bf16 / fp16 activations (as patch_comfy_wan builds it)


def weight_bytes(parameters: int, weights: str) -> int:
    """Bytes of ``parameters`` weights stored as ``weights`` (one of :data:`WEIGHT_FORMATS`)."""
    if weights not in WEIGHT_BITS:
        raise ValueError(f"--weights must be one of {list(WEIGHT_FORMATS)}; got {weights!r}")
    return math.ceil(parameters * WEIGHT_BITS[weights] / 8)


def phi_bytes(shape: WanShape, feature_map: FeatureMapConfig, blocks: int | None = None) -> int:
    """Bytes of the φq / φk pairs of ``blocks`` converted blocks (default: all), fp32."""
    count = shape.num_layers if blocks is None else blocks
    per_block = feature_map_parameter_count(shape.num_heads, shape.head_dim, feature_map)
    return count * per_block * PHI_BYTES_PER_PARAMETER
