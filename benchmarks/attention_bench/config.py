"""What one attention benchmark run measures: :class:`BenchConfig`, its presets and constants."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rehyat.config import FeatureMapConfig

CASES = ("softmax", "parallel", "recurrent")
REHYAT_CASES = ("parallel", "recurrent")
EFFICIENCY_TARGET = 0.8
MEMORY_SPREAD_TARGET = 0.10
MIB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one benchmark run (serialised into the JSON's ``config``)."""

    batch: int = 1
    heads: int = 12
    head_dim: int = 128
    tokens_per_frame: int = 600
    chunk_frames: int = 3
    overlap_frames: int = 1
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    frames: tuple[int, ...] = (21, 31, 41)
    memory_frames: tuple[int, ...] = (21, 41, 81, 161)
    softmax_memory_max_frames: int = 81
    memory_repeats: int = 3
    repeats: int = 3
    seed: int = 0
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["frames"] = list(self.frames)
        data["memory_frames"] = list(self.memory_frames)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["feature_map"] = FeatureMapConfig.from_dict(data["feature_map"])
        data["frames"] = tuple(data["frames"])
        data["memory_frames"] = tuple(data["memory_frames"])
        return cls(**data)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor dtype of q, k, v."""
        return getattr(torch, self.dtype)


QUICK = {
    "heads": 4, "head_dim": 32, "tokens_per_frame": 16, "frames": (6, 9),
    "memory_frames": (6, 12), "memory_repeats": 1,
    "feature_map": FeatureMapConfig(hidden_dim=32, feature_dim=32),
}


def log(message: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
