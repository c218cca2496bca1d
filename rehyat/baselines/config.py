"""The fidelity baselines' attention config: ReHyAt's settings plus which baseline runs, and its R."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..config import HybridAttentionConfig, _known_fields, require_int

BaselineVariant = Literal["linear_only", "windowed_softmax", "uniform_hybrid"]
BASELINE_VARIANTS: tuple[str, ...] = ("linear_only", "windowed_softmax", "uniform_hybrid")


@dataclass(frozen=True, kw_only=True)
class BaselineAttentionConfig(HybridAttentionConfig):
    """A fidelity-table baseline in place of ReHyAt's attention (parallel form only).

    It keeps :class:`~rehyat.config.HybridAttentionConfig`'s fields (the baselines use what they
    need of them), so a :class:`~rehyat.config.ConversionConfig` carries it like ReHyAt's config
    and :func:`rehyat.hybrid.build_attention` builds its module.

    Attributes:
        variant: "linear_only" (φ over every token, no softmax — Hedgehog style), "windowed_softmax"
            (ReHyAt's softmax windows with no linear part; no φ to train; causal changes nothing
            for it) or "uniform_hybrid" (softmax to every ``rate``-th token, linear to the rest —
            Attention Surgery style). "linear_only" and "uniform_hybrid" are bidirectional over all
            tokens and ignore chunk_frames, overlap_frames and causal.
        rate: R of "uniform_hybrid" (an integer ≥ 1; 1 is plain softmax); ignored otherwise.
    """

    variant: BaselineVariant
    rate: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in BASELINE_VARIANTS:
            raise ValueError(
                f"variant must be one of {BASELINE_VARIANTS} (the fidelity baselines; ReHyAt itself is a "
                f"HybridAttentionConfig); got {self.variant!r}"
            )
        require_int("rate", self.rate, low=1)

    @classmethod
    def like(cls, attention: HybridAttentionConfig, variant: str, **changes: Any) -> BaselineAttentionConfig:
        """The baseline ``variant`` with ``attention``'s Tc, To, causality and φ shape (``changes``
        override any field, e.g. ``causal=False, rate=4``)."""
        shared = {f.name: getattr(attention, f.name) for f in fields(HybridAttentionConfig)}
        return cls(**{**shared, "variant": variant, **changes})

    @property
    def baseline(self) -> str:
        """The baseline's name: its :attr:`variant`."""
        return self.variant

    @property
    def uses_phi(self) -> bool:
        """Every baseline but the windowed softmax has φ to train."""
        return self.variant != "windowed_softmax"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable), the same keys as ReHyAt's."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineAttentionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**_known_fields(cls, data))
