"""Configuration dataclasses: the single home of ReHyAt's defaults.

Every other module takes its defaults from here, so a default changes in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Activation = Literal["relu", "gelu", "silu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu")
EPS_MIN = 1e-12  # smallest FeatureMapConfig.eps: eps² must stay a normal fp32 number


@dataclass(frozen=True)
class FeatureMapConfig:
    """Shape of the learned feature maps φq / φk (one per head, as a grouped 1×1 MLP).

    Defaults follow the paper: a 2-layer MLP with degree-2 polynomial features. With Wan2.1-1.3B's
    12 heads × 128 the pair (φq, φk) has ≈2.37 M parameters per converted block.

    Attributes:
        hidden_dim: width of the MLP's hidden layer, per head.
        feature_dim: width of the MLP's output ψ per head; split into ``degree`` equal parts, so it
            must be a multiple of ``degree``. φ has the same width (d' = feature_dim).
        degree: P, the number of parts; part i (1-based) is raised to the power i.
        activation: non-linearity between the two layers.
        init_bias: initial bias of the output layer (before softplus); sets the kernel's initial
            scale: softplus(−6) ≈ 2.5e-3 per feature, so φq·φk ≈ 1e-3 per key pair at init — the
            size of one softmax weight over a window of ~1000 tokens. Allowed: [-50, 50].
        eps: floor added to ψ = softplus(·), in [1e-12, 1]: the first part's features are ≥ eps, so
            φq·φk ≥ (feature_dim / degree)·eps² > 0 in fp32 (eps² stays a normal fp32 number).
    """

    hidden_dim: int = 256
    feature_dim: int = 256
    degree: int = 2
    activation: Activation = "silu"
    init_bias: float = -6.0
    eps: float = 1e-4

    def __post_init__(self) -> None:
        require_int("hidden_dim", self.hidden_dim, low=1)
        require_int("degree", self.degree, low=1, high=8)
        require_int("feature_dim", self.feature_dim, low=self.degree)
        if self.feature_dim % self.degree:
            raise ValueError(
                f"feature_dim must be a multiple of degree ({self.degree}); got {self.feature_dim}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        require_real("init_bias", self.init_bias, low=-50.0, high=50.0)
        require_real("eps", self.eps, low=EPS_MIN, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureMapConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**_known_fields(cls, data))


FORMAT_TAG: dict[str, Any] = {"variant": "rehyat", "rate": 2}
"""Keys a serialised :class:`HybridAttentionConfig` carries besides its fields (a pinned format: φ
files, run identities and reports hold it). ``variant`` names the attention ("rehyat"; a fidelity
baseline of :mod:`rehyat.baselines` writes its own name), ``rate`` is the uniform-hybrid baseline's
R, written as 2 for ReHyAt so files and run folders made before the baselines moved out compare equal.
"""


@dataclass(frozen=True)
class HybridAttentionConfig:
    """How a ReHyAt attention layer splits frames into softmax and linear parts.

    The fidelity table's baselines extend it (:class:`rehyat.baselines.BaselineAttentionConfig`);
    :attr:`baseline` and :attr:`uses_phi` are what the product path asks of either.

    Attributes:
        chunk_frames: Tc, latent frames per chunk (≥ 1). The paper's best: 3.
        overlap_frames: To, earlier frames each chunk also sees with softmax (≥ 0). Paper's best: 1.
        causal: linear attention over earlier frames only (recurrent-capable) when True; over every
            frame outside the softmax window when False.
        feature_map: shape of φq / φk.
    """

    chunk_frames: int = 3
    overlap_frames: int = 1
    causal: bool = True
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)

    def __post_init__(self) -> None:
        require_int("chunk_frames", self.chunk_frames, low=1)
        require_int("overlap_frames", self.overlap_frames, low=0)
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool; got {self.causal!r}")
        if isinstance(self.feature_map, dict):
            object.__setattr__(self, "feature_map", FeatureMapConfig.from_dict(self.feature_map))

    @property
    def baseline(self) -> str | None:
        """None: this is ReHyAt. A fidelity baseline names itself (it runs in the parallel form only)."""
        return None

    @property
    def uses_phi(self) -> bool:
        """Whether the attention has φq / φk to train (ReHyAt always; not every baseline)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable): the fields plus :data:`FORMAT_TAG`."""
        return {**asdict(self), **FORMAT_TAG}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridAttentionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        ``variant`` and ``rate`` may be absent (files written before the baselines existed). With
        ``variant`` "rehyat" the ``rate`` is checked (an integer ≥ 1) and ignored; another
        ``variant`` gives that fidelity baseline's :class:`~rehyat.baselines.BaselineAttentionConfig`.
        """
        data = dict(data)
        variant = data.pop("variant", FORMAT_TAG["variant"])
        if variant != FORMAT_TAG["variant"]:
            from .baselines.config import BaselineAttentionConfig  # late: the baselines build on this module

            return BaselineAttentionConfig.from_dict({**data, "variant": variant})
        require_int("rate", data.pop("rate", FORMAT_TAG["rate"]), low=1)
        return cls(**_known_fields(cls, data))


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {sorted(names)}")
    return dict(data)


def require_real(name: str, value: Any, *, low: float, high: float) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a real number in ``[low, high]``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low <= value <= high):
        raise ValueError(f"{name} must be a real number in [{low:g}, {high:g}]; got {value!r}")


def require_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    """Raise a ValueError naming ``name`` unless ``low <= value (<= high)`` is an int."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        allowed = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


Placement = Literal["first", "last", "even"]
PLACEMENTS: tuple[str, ...] = ("first", "last", "even")


@dataclass(frozen=True)
class ConversionConfig:
    """Which self-attention blocks of a DiT become ReHyAt, and how.

    Either ``blocks`` (explicit indices) or ``num_blocks`` + ``placement`` chooses them; with
    neither, every block is converted. The paper converts 15, 20 or 25 of Wan2.1-1.3B's 30 blocks.

    Attributes:
        num_blocks: how many blocks to convert (None: all, unless ``blocks`` is given).
        placement: "first", "last" or "even" (evenly spaced, always including the last block).
        blocks: explicit block indices (overrides num_blocks / placement).
        attention: chunking, causality and φ shape shared by all converted blocks.
    """

    num_blocks: int | None = None
    placement: Placement = "last"
    blocks: tuple[int, ...] | None = None
    attention: HybridAttentionConfig = field(default_factory=HybridAttentionConfig)

    def __post_init__(self) -> None:
        if self.num_blocks is not None:
            require_int("num_blocks", self.num_blocks, low=0)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {self.placement!r}")
        if self.blocks is not None:
            blocks = tuple(self.blocks)
            for b in blocks:
                require_int("blocks[i]", b, low=0)
            if len(set(blocks)) != len(blocks):
                raise ValueError(f"blocks must not repeat an index; got {list(blocks)}")
            object.__setattr__(self, "blocks", tuple(sorted(blocks)))
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", HybridAttentionConfig.from_dict(self.attention))

    def resolve_blocks(self, total_blocks: int) -> tuple[int, ...]:
        """The converted block indices for a model with ``total_blocks`` blocks."""
        require_int("total_blocks", total_blocks, low=1)
        if self.blocks is not None:
            bad = [b for b in self.blocks if b >= total_blocks]
            if bad:
                raise ValueError(f"blocks {bad} out of range: the model has blocks 0..{total_blocks - 1}")
            return self.blocks
        count = total_blocks if self.num_blocks is None else self.num_blocks
        if count > total_blocks:
            raise ValueError(f"num_blocks must be in [0, {total_blocks}] for this model; got {count}")
        if count == 0:
            return ()
        if self.placement == "first":
            return tuple(range(count))
        if self.placement == "last":
            return tuple(range(total_blocks - count, total_blocks))
        step = total_blocks / count  # evenly spaced, ending at the last block
        return tuple(sorted({total_blocks - 1 - int(i * step) for i in range(count)}))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        data = asdict(self)
        data["blocks"] = list(self.blocks) if self.blocks is not None else None
        data["attention"] = self.attention.to_dict()  # asdict would drop its FORMAT_TAG
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        data = _known_fields(cls, data)
        if data.get("blocks") is not None:
            data["blocks"] = tuple(data["blocks"])
        return cls(**data)


RECURRENT_FORWARD = "the recurrent (chunk-by-chunk) forward"
PARALLEL_INSTEAD = "use the parallel forward"


def check_recurrent_causal(
    causal: bool, *, what: str = RECURRENT_FORWARD, instead: str = PARALLEL_INSTEAD
) -> None:
    """Refuse a recurrent run of non-causal blocks: the one statement of that rule.

    ``what`` names the caller's recurrent form (e.g. "forward_mode 'recurrent'"), ``instead`` the
    alternative the message offers.
    """
    if not causal:
        raise ValueError(
            f"{what} needs causal ReHyAt blocks (it needs causal=True): a non-causal block lets early "
            f"frames attend to later ones. Use causal=True, or {instead}."
        )


def check_recurrent_capable(
    converted: Sequence[int],
    num_blocks: int,
    attention: HybridAttentionConfig,
    *,
    what: str = RECURRENT_FORWARD,
    instead: str = PARALLEL_INSTEAD,
) -> None:
    """Refuse a recurrent run unless every block is converted to causal ReHyAt, saying why.

    The recurrent form runs the whole DiT chunk by chunk, so a block left softmax (which attends to
    all frames at once) or a non-causal block cannot take part. ``attention`` is the conversion's
    attention config: a fidelity baseline (:attr:`HybridAttentionConfig.baseline`) has no recurrent form.
    """
    if attention.baseline is not None:
        raise ValueError(
            f"{what} runs ReHyAt only; this conversion uses the {attention.baseline!r} baseline (parallel "
            f"form only): convert with ReHyAt attention or {instead}"
        )
    missing = sorted(set(range(num_blocks)) - set(converted))
    if missing:
        raise ValueError(
            f"{what} runs the whole DiT chunk by chunk, so it needs every block converted to ReHyAt: "
            f"this conversion has {num_blocks - len(missing)} of {num_blocks} blocks, and blocks {missing} "
            f"still use softmax attention over all frames. Convert all {num_blocks} blocks (num_blocks="
            f"{num_blocks} or blocks=None), or {instead}."
        )
    check_recurrent_causal(attention.causal, what=what, instead=instead)
