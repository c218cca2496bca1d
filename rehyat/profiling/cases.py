"""The attention configurations a profile compares (softmax, ReHyAt, uniform hybrid, context windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import FeatureMapConfig, HybridAttentionConfig, check_recurrent_causal, require_int

_ATTENTION = HybridAttentionConfig()
Form = Literal["parallel", "recurrent"]
FORMS: tuple[str, ...] = ("parallel", "recurrent")


def _check_blocks(converted_blocks: int | None) -> None:
    if converted_blocks is not None:
        require_int("converted_blocks", converted_blocks, low=0)


def resolve_converted(converted_blocks: int | None, num_layers: int) -> int:
    """How many of ``num_layers`` blocks a case converts (None: all); more than the model has is an error."""
    count = num_layers if converted_blocks is None else converted_blocks
    if count > num_layers:
        raise ValueError(f"converted_blocks must be in [0, {num_layers}] for this model; got {count}")
    return count


@dataclass(frozen=True)
class SoftmaxCase:
    """Wan2.1 as shipped: full softmax self-attention in every block."""

    kind: Literal["softmax"] = "softmax"

    @property
    def label(self) -> str:
        """Name in tables and legends."""
        return "softmax"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind}


@dataclass(frozen=True)
class ReHyAtCase:
    """ReHyAt in ``converted_blocks`` blocks (None: all); the other blocks stay softmax.

    Attributes:
        chunk_frames: Tc (≥ 1). overlap_frames: To (≥ 0). causal: linear part over earlier frames only.
        form: "parallel" or "recurrent" (same FLOPs; different latency and memory).
        feature_map: φ size (the paper's default: 256 hidden, 256 features, degree 2).
    """

    chunk_frames: int = _ATTENTION.chunk_frames
    overlap_frames: int = _ATTENTION.overlap_frames
    converted_blocks: int | None = None
    causal: bool = _ATTENTION.causal
    form: Form = "parallel"
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    kind: Literal["rehyat"] = "rehyat"

    def __post_init__(self) -> None:
        require_int("chunk_frames (Tc)", self.chunk_frames, low=1)
        require_int("overlap_frames (To)", self.overlap_frames, low=0)
        _check_blocks(self.converted_blocks)
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool; got {self.causal!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {self.form!r}")
        if self.form == "recurrent":
            check_recurrent_causal(self.causal, what="form='recurrent'", instead="form='parallel'")

    @property
    def label(self) -> str:
        """Name in tables and legends."""
        blocks = "" if self.converted_blocks is None else f"{self.converted_blocks}×"
        causal = "" if self.causal else " non-causal"
        return f"rehyat {blocks}Tc={self.chunk_frames} To={self.overlap_frames}{causal} ({self.form})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "chunk_frames": self.chunk_frames, "overlap_frames": self.overlap_frames,
                "converted_blocks": self.converted_blocks, "causal": self.causal, "form": self.form,
                "feature_map": self.feature_map.to_dict()}


@dataclass(frozen=True)
class UniformHybridCase:
    """Uniform hybrid attention, Attention Surgery style, in ``converted_blocks`` blocks (None: all).

    Every query attends with softmax to every R-th key (a uniform 1/R subsample of all frames) and
    with linear attention to the remaining keys — quadratic still, R times cheaper in its softmax part.
    """

    rate: int = 2
    converted_blocks: int | None = None
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    kind: Literal["uniform_hybrid"] = "uniform_hybrid"

    def __post_init__(self) -> None:
        require_int("rate (R)", self.rate, low=1)
        _check_blocks(self.converted_blocks)

    @property
    def label(self) -> str:
        """Name in tables and legends."""
        blocks = "" if self.converted_blocks is None else f"{self.converted_blocks}×"
        return f"uniform hybrid {blocks}R={self.rate}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "rate": self.rate, "converted_blocks": self.converted_blocks,
                "feature_map": self.feature_map.to_dict()}


InnerCase = SoftmaxCase | ReHyAtCase | UniformHybridCase


@dataclass(frozen=True)
class ContextWindowCase:
    """ComfyUI's context windows (WanContextWindowsManual, static standard schedule) around ``inner``.

    The model runs once per window of ``window_frames`` latent frames; windows advance by
    ``window_frames − overlap_frames`` and the last one is shifted back to end on the last frame.
    Defaults: 81 video frames = 21 latent frames, overlap 16 video frames = 4 latent frames.
    """

    window_frames: int = 21
    overlap_frames: int = 4
    inner: InnerCase = field(default_factory=SoftmaxCase)
    kind: Literal["context_windows"] = "context_windows"

    def __post_init__(self) -> None:
        require_int("window_frames", self.window_frames, low=1)
        require_int("window overlap_frames", self.overlap_frames, low=0)
        if self.overlap_frames >= self.window_frames:
            raise ValueError(f"window overlap_frames must be < window_frames ({self.window_frames}); "
                             f"got {self.overlap_frames}")
        if isinstance(self.inner, ContextWindowCase):
            raise ValueError("context windows cannot nest")

    @property
    def label(self) -> str:
        """Name in tables and legends."""
        return f"context windows {self.window_frames}/{self.overlap_frames} + {self.inner.label}"

    def windows(self, frames: int) -> list[tuple[int, int]]:
        """[start, end) latent-frame ranges of the windows over ``frames`` frames (ComfyUI's schedule)."""
        require_int("frames", frames, low=1)
        if frames <= self.window_frames:
            return [(0, frames)]
        out, step = [], self.window_frames - self.overlap_frames
        for start in range(0, frames, step):
            if start + self.window_frames >= frames:
                out.append((frames - self.window_frames, frames))
                break
            out.append((start, start + self.window_frames))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "window_frames": self.window_frames, "overlap_frames": self.overlap_frames,
                "inner": self.inner.to_dict()}


Case = SoftmaxCase | ReHyAtCase | UniformHybridCase | ContextWindowCase


def case_from_dict(data: dict[str, Any]) -> Case:
    """Inverse of the cases' ``to_dict``."""
    data = dict(data)
    kind = data.pop("kind", None)
    if "feature_map" in data:
        data["feature_map"] = FeatureMapConfig.from_dict(data["feature_map"])
    if kind == "softmax":
        return SoftmaxCase()
    if kind == "rehyat":
        return ReHyAtCase(**data)
    if kind == "uniform_hybrid":
        return UniformHybridCase(**data)
    if kind == "context_windows":
        return ContextWindowCase(data["window_frames"], data["overlap_frames"], case_from_dict(data["inner"]))
    raise ValueError(f"unknown case kind {kind!r}; allowed: softmax, rehyat, uniform_hybrid, context_windows")
