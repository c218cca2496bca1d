"""ReHyAt: recurrent hybrid attention for video diffusion transformers (pure PyTorch).

Never imports ComfyUI; the ComfyUI nodes live in the sibling ``nodes`` package.
"""

from __future__ import annotations

from .config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from .feature_maps import FeatureMapPair, HeadwiseFeatureMap, feature_map_parameter_count
from .hybrid import FrameGrid, HybridAttention, ReHyAtRun
from .ops import RecurrentState, rehyat_attention, rehyat_step

__version__ = "0.1.0"

__all__ = [
    "ConversionConfig",
    "FeatureMapConfig",
    "FrameGrid",
    "HybridAttention",
    "ReHyAtRun",
    "FeatureMapPair",
    "HeadwiseFeatureMap",
    "HybridAttentionConfig",
    "RecurrentState",
    "__version__",
    "feature_map_parameter_count",
    "rehyat_attention",
    "rehyat_step",
]
