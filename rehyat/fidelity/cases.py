"""The configurations of the fidelity table: ReHyAt's ablations and the baselines it is compared to.

The reference is the paper's best setting (Tc = 3, To = 1, causal, every block converted, φ distilled).
Each ablation changes one thing (the paper's Tables 6–8 and the number of converted blocks); the
baselines swap the attention (linear-only, windowed softmax without the linear part, uniform hybrid).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..baselines import BaselineAttentionConfig
from ..config import ConversionConfig, HybridAttentionConfig, require_int

Group = Literal["reference", "baseline", "chunk_frames", "overlap_frames", "causality", "blocks", "finetune"]
GROUPS: tuple[str, ...] = (
    "reference",
    "baseline",
    "chunk_frames",
    "overlap_frames",
    "causality",
    "blocks",
    "finetune",
)
GRIDS: tuple[str, ...] = ("full", "reduced")


@dataclass(frozen=True)
class FidelityCase:
    """One row of the fidelity table.

    Attributes:
        name: unique id (file names, JSON keys).
        group: which comparison it belongs to (see :data:`GROUPS`).
        attention: Tc, To, causality and φ shape of the converted blocks; a
            :class:`~rehyat.baselines.BaselineAttentionConfig` for a baseline.
        converted_blocks: how many blocks (the last ones) are converted; None: all.
        finetune: after distillation, fine-tune with flow matching (stage 2).
    """

    name: str
    group: Group
    attention: HybridAttentionConfig = field(default_factory=HybridAttentionConfig)
    converted_blocks: int | None = None
    finetune: bool = False

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}; got {self.group!r}")
        if self.converted_blocks is not None:
            require_int("converted_blocks", self.converted_blocks, low=1)
        if self.finetune and not self.attention.uses_phi:
            raise ValueError(f"finetune needs φ to train; the {self.attention.baseline} baseline has none")

    @property
    def distils(self) -> bool:
        """Whether the case has φ to distil (every case but the windowed-softmax baseline)."""
        return self.attention.uses_phi

    @property
    def label(self) -> str:
        """Name in tables and plots."""
        a = self.attention
        if isinstance(a, BaselineAttentionConfig):
            return _baseline_label(a)
        text = f"ReHyAt Tc={a.chunk_frames} To={a.overlap_frames}"
        if not a.causal:
            text += " non-causal"
        if self.converted_blocks is not None:
            text += f", {self.converted_blocks} blocks"
        if self.finetune:
            text += " + fine-tune"
        return text

    def conversion(self, num_blocks: int) -> ConversionConfig:
        """The conversion of a model with ``num_blocks`` blocks (the last ``converted_blocks``)."""
        count = None if self.converted_blocks is None else min(self.converted_blocks, num_blocks)
        return ConversionConfig(num_blocks=count, placement="last", attention=self.attention)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``attention`` always holds ``variant`` and ``rate``)."""
        return {
            "name": self.name,
            "group": self.group,
            "label": self.label,
            "attention": self.attention.to_dict(),
            "converted_blocks": self.converted_blocks,
            "finetune": self.finetune,
        }


def _baseline_label(a: BaselineAttentionConfig) -> str:
    if a.variant == "linear_only":
        return "linear-only (Hedgehog)"
    if a.variant == "uniform_hybrid":
        return f"uniform hybrid R={a.rate}"
    return f"windowed softmax Tc={a.chunk_frames} To={a.overlap_frames} (no linear part)"


def reference_case() -> FidelityCase:
    """The paper's best: Tc = 3, To = 1, causal, every block, distilled."""
    return FidelityCase("rehyat", "reference")


def full_grid(num_blocks: int = 4) -> list[FidelityCase]:
    """Every comparison of the fidelity table for a teacher of ``num_blocks`` blocks."""
    ref = reference_case()
    a = ref.attention
    baseline = BaselineAttentionConfig.like
    cases = [ref]
    cases += [
        FidelityCase("linear_only", "baseline", baseline(a, "linear_only", causal=False)),
        FidelityCase("windowed_softmax", "baseline", baseline(a, "windowed_softmax")),
        FidelityCase("uniform_r2", "baseline", baseline(a, "uniform_hybrid", rate=2, causal=False)),
        FidelityCase("uniform_r4", "baseline", baseline(a, "uniform_hybrid", rate=4, causal=False)),
    ]
    cases += [FidelityCase(f"tc{tc}", "chunk_frames", replace(a, chunk_frames=tc)) for tc in (1, 2, 5)]
    cases += [FidelityCase(f"to{to}", "overlap_frames", replace(a, overlap_frames=to)) for to in (0, 2, 3)]
    cases += [FidelityCase("non_causal", "causality", replace(a, causal=False))]
    cases += [
        FidelityCase(f"blocks{n}", "blocks", converted_blocks=n)
        for n in sorted({max(1, num_blocks // 2), max(1, (3 * num_blocks) // 4)})
        if n < num_blocks
    ]
    cases += [FidelityCase("finetuned", "finetune", finetune=True)]
    return cases


def reduced_grid(num_blocks: int = 4) -> list[FidelityCase]:
    """A few cases covering every code path (the tests' grid): reference, each baseline kind,
    a Tc and a To change, non-causal, fewer blocks and fine-tune."""
    keep = {
        "rehyat",
        "linear_only",
        "windowed_softmax",
        "uniform_r2",
        "tc1",
        "to0",
        "non_causal",
        "finetuned",
    }
    cases = [c for c in full_grid(num_blocks) if c.name in keep]
    blocks = [c for c in full_grid(num_blocks) if c.group == "blocks"]
    return cases + blocks[:1]


def grid(name: str, num_blocks: int = 4) -> list[FidelityCase]:
    """The named grid ("full" or "reduced")."""
    if name not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}; got {name!r}")
    return full_grid(num_blocks) if name == "full" else reduced_grid(num_blocks)
