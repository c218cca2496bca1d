"""The shape of the Wan transformer a φ file was made for (:class:`BaseModelInfo`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import require_int


@dataclass(frozen=True)
class BaseModelInfo:
    """The shape of the Wan transformer a φ file was made for.

    Attributes:
        dim: model width (1536 for Wan2.1-1.3B, 5120 for 14B).
        num_heads: attention heads per block (12 / 40); ``dim`` must be a multiple.
        num_layers: number of transformer blocks (30 / 40).
    """

    dim: int
    num_heads: int
    num_layers: int

    def __post_init__(self) -> None:
        for name in ("dim", "num_heads", "num_layers"):
            require_int(f"BaseModelInfo.{name}", getattr(self, name), low=1)
        if self.dim % self.num_heads:
            raise ValueError(
                f"BaseModelInfo.dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads

    def describe(self) -> str:
        """Human-readable form used in error messages, e.g. ``dim=1536, heads=12, layers=30``."""
        return f"dim={self.dim}, heads={self.num_heads}, layers={self.num_layers}"

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form (JSON-serialisable)."""
        return {"dim": self.dim, "num_heads": self.num_heads, "num_layers": self.num_layers}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseModelInfo:
        """Inverse of :meth:`to_dict`; missing or unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"BaseModelInfo data must be a mapping; got {type(data).__name__}")
        names = ("dim", "num_heads", "num_layers")
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(
                f"BaseModelInfo needs exactly the fields {list(names)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(dim=data["dim"], num_heads=data["num_heads"], num_layers=data["num_layers"])
