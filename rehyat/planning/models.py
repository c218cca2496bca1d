"""The models the planner knows: their DiT shapes, VAE strides, experts and parameter counts.

Shapes of Wan2.1 come from :data:`rehyat.profiling.PRESETS`; Wan2.2's are their published configs
(A14B: two experts of Wan2.1-14B's shape, a high-noise and a low-noise one, used one after the other;
TI2V-5B: width 3072, 48 latent channels, a VAE with 16× spatial compression). Parameter counts are
read off a :class:`~rehyat.models.wan.WanDiT` built on the meta device — the code's own module tree,
no formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..config import require_int
from ..profiling.presets import PRESETS, WanShape


@dataclass(frozen=True)
class PlanModel:
    """A model the planner sizes.

    Attributes:
        name: the ``--model`` value.
        shape: its DiT sizes.
        space_stride: pixels per latent cell along each side (VAE): 8 for Wan2.1 / A14B, 16 for 5B.
        time_stride: video frames per latent frame after the first (4 for every Wan VAE).
        experts: DiTs of this shape the sampler switches between (A14B: 2); one is resident at a time.
    """

    name: str
    shape: WanShape
    space_stride: int = 8
    time_stride: int = 4
    experts: int = 1

    def __post_init__(self) -> None:
        for field_name in ("space_stride", "time_stride", "experts"):
            require_int(field_name, getattr(self, field_name), low=1)

    @property
    def parameters(self) -> int:
        """Parameters of one expert (T2V layout)."""
        return dit_parameter_count(self.shape)

    @property
    def pixels_per_token(self) -> int:
        """Pixels along each side of one DiT token (VAE stride × patch)."""
        return self.space_stride * self.shape.patch[1]


PLAN_MODELS: dict[str, PlanModel] = {
    "wan2.1-1.3b": PlanModel("wan2.1-1.3b", PRESETS["wan2.1-1.3b"]),
    "wan2.1-14b": PlanModel("wan2.1-14b", PRESETS["wan2.1-14b"]),
    "wan2.2-a14b": PlanModel("wan2.2-a14b", WanShape("wan2.2-a14b", dim=5120, num_layers=40, num_heads=40,
                                                     ffn_dim=13824), experts=2),
    "wan2.2-5b": PlanModel("wan2.2-5b", WanShape("wan2.2-5b", dim=3072, num_layers=30, num_heads=24,
                                                 ffn_dim=14336, in_dim=48, out_dim=48), space_stride=16),
}


def get_plan_model(name: str) -> PlanModel:
    """The model called ``name`` (case-insensitive); ValueError listing the allowed names."""
    key = str(name).lower()
    if key not in PLAN_MODELS:
        raise ValueError(f"--model must be one of {sorted(PLAN_MODELS)}; got {name!r}")
    return PLAN_MODELS[key]


def plan_model_for_shape(shape: WanShape, *, space_stride: int = 8) -> PlanModel:
    """A :class:`PlanModel` for any DiT shape (e.g. a connected model's, read by the Profile node)."""
    return PlanModel(shape.name, shape, space_stride=space_stride)


@lru_cache(maxsize=32)
def dit_parameter_count(shape: WanShape) -> int:
    """Parameters of a T2V :class:`~rehyat.models.wan.WanDiT` of ``shape`` (built on the meta device)."""
    from ..models.wan import WanDiT, WanDiTConfig

    config = WanDiTConfig(dim=shape.dim, ffn_dim=shape.ffn_dim, num_heads=shape.num_heads,
                          num_layers=shape.num_layers, in_dim=shape.in_dim, out_dim=shape.out_dim,
                          text_dim=shape.text_dim, freq_dim=shape.freq_dim, patch_size=shape.patch)
    with torch.device("meta"):
        model = WanDiT(config)
    return sum(p.numel() for p in model.parameters())
