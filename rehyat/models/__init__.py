"""Pure-PyTorch models: :class:`~rehyat.models.wan.WanDiT` (Wan2.1's DiT, original key names) and
its ReHyAt conversion (:mod:`rehyat.models.wan_rehyat`). Nothing here imports ComfyUI or diffusers."""

from __future__ import annotations

from .wan import WanDiT, WanDiTConfig
from .wan_layers import SoftmaxAttention

__all__ = ["SoftmaxAttention", "WanDiT", "WanDiTConfig"]
