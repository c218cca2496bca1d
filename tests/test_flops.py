"""FLOP accounting: the CPU flash-attention formula and the analytic counts, against FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.flops import register_cpu_flash_flop_formula, rehyat_attention_flops, softmax_attention_flops
from rehyat.ops import rehyat_attention

CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def counted(fn) -> tuple[int, dict]:
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def test_cpu_flash_formula_is_registered_once():
    register_cpu_flash_flop_formula()
    assert register_cpu_flash_flop_formula() is False  # idempotent: already there
    from torch.utils import flop_counter

    assert CPU_FLASH.default in flop_counter.flop_registry or CPU_FLASH in flop_counter.flop_registry


def test_softmax_flops_counted_on_cpu_equal_the_analytic_count():
    register_cpu_flash_flop_formula()
    q, k, v = (torch.randn(2, 3, 40, 16) for _ in range(3))
    total, by_op = counted(lambda: F.scaled_dot_product_attention(q, k, v))
    assert total == softmax_attention_flops(2, 3, 40, 16) == 4 * 2 * 3 * 40 * 40 * 16
    assert any("flash_attention_for_cpu" in op for op in by_op), by_op


def test_softmax_backward_flops_are_counted():
    register_cpu_flash_flop_formula()
    q, k, v = (torch.randn(1, 2, 32, 8, requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    total, _ = counted(lambda: out.sum().backward())
    # Flash backward: QKᵀ recomputed, then dV, dP, dQ, dK — five matmuls to the forward's two.
    assert total == 5 * softmax_attention_flops(1, 2, 32, 8) // 2


@pytest.mark.parametrize(("frames", "tc", "to"), [(7, 3, 1), (6, 2, 0), (5, 1, 2), (4, 5, 1)])
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_rehyat_flops_counted_equal_the_analytic_count(frames, tc, to, mode):
    register_cpu_flash_flop_formula()
    fm = FeatureMapConfig(hidden_dim=12, feature_dim=10)
    maps = FeatureMapPair(2, 8, fm)
    p = 6
    q, k, v = (torch.randn(1, 2, frames * p, 8) for _ in range(3))
    kw = dict(phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=tc, overlap_frames=to)
    with torch.inference_mode():
        total, _ = counted(lambda: rehyat_attention(q, k, v, mode=mode, **kw))
    analytic = rehyat_attention_flops(1, 2, frames, p, 8, chunk_frames=tc, overlap_frames=to, feature_map=fm)
    assert total == analytic.total
    assert analytic.total == analytic.softmax + analytic.feature_maps + analytic.linear
    if tc >= frames:  # one chunk: plain softmax attention, nothing linear
        assert analytic.feature_maps == analytic.linear == 0
        assert analytic.total == softmax_attention_flops(1, 2, frames * p, 8)
