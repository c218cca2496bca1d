"""rehyat.hybrid.check_hybrid_modules: φ modules that do not fit a conversion are refused by name."""

from __future__ import annotations

import pytest

from rehyat.config import FeatureMapConfig, HybridAttentionConfig
from rehyat.hybrid import HybridAttention, check_hybrid_modules

ATTENTION = HybridAttentionConfig(
    chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(hidden_dim=4)
)


def modules(blocks, config=ATTENTION, heads=2, head_dim=8):
    return {i: HybridAttention(heads, head_dim, config, i) for i in blocks}


def test_fitting_modules_pass():
    check_hybrid_modules(modules((1, 3)), (1, 3), ATTENTION, (2, 8))


def test_missing_or_extra_blocks_are_refused():
    with pytest.raises(ValueError, match=r"φ modules cover blocks \[1\] but the config converts \[1, 3\]"):
        check_hybrid_modules(modules((1,)), (1, 3), ATTENTION)


def test_module_built_for_another_config_or_block_is_refused():
    other = HybridAttentionConfig(chunk_frames=3, feature_map=FeatureMapConfig(hidden_dim=4))
    with pytest.raises(ValueError, match="φ module of block 1 was built for"):
        check_hybrid_modules(modules((1,), config=other), (1,), ATTENTION)
    moved = {1: HybridAttention(2, 8, ATTENTION, 0)}
    with pytest.raises(ValueError, match=r"\(block 0\)"):
        check_hybrid_modules(moved, (1,), ATTENTION)


def test_head_layout_is_checked_only_when_given():
    hybrid = modules((0,), heads=4, head_dim=8)
    check_hybrid_modules(hybrid, (0,), ATTENTION)
    with pytest.raises(ValueError, match="φ of block 0 has 4 heads × 8 but the model has 2 × 8"):
        check_hybrid_modules(hybrid, (0,), ATTENTION, (2, 8))
