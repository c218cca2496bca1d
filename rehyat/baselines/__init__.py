"""The fidelity table's attention baselines, kept off the product path.

Linear-only (Hedgehog style), windowed softmax (ReHyAt's softmax windows, no linear part) and
uniform hybrid (Attention Surgery style) are chosen by a :class:`BaselineAttentionConfig` (ReHyAt's
settings plus ``variant`` and ``rate``) and run through :class:`BaselineAttention`, which has
:class:`~rehyat.hybrid.HybridAttention`'s interface so the model adapters and distillation treat a
baseline block like a ReHyAt one; :func:`rehyat.hybrid.build_attention` builds it for a baseline
config. Parallel form only: a baseline has no recurrent form.
"""

from __future__ import annotations

from .attention import BaselineAttention
from .config import BASELINE_VARIANTS, BaselineAttentionConfig, BaselineVariant

__all__ = ["BASELINE_VARIANTS", "BaselineAttention", "BaselineAttentionConfig", "BaselineVariant"]
