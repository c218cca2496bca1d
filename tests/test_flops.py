"""FLOP accounting: the CPU flash-attention formula and the analytic counts, against FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.flops import (
    linear_attention_flops,
    register_cpu_flash_flop_formula,
    rehyat_attention_flops,
    softmax_attention_flops,
    uniform_hybrid_attention_flops,
)
from rehyat.ops import rehyat_attention
from rehyat.ops.linear_only import linear_attention
from rehyat.ops.uniform_hybrid import uniform_hybrid_attention

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


def naive_uniform_hybrid(q, k, v, phi_q, phi_k, rate):
    """Reference uniform hybrid attention: softmax over every R-th key, linear over the others."""
    n = q.shape[2]
    soft = torch.arange(0, n, rate)
    lin = torch.tensor([j for j in range(n) if j % rate])
    scores = q @ k[:, :, soft].transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, N, N/R)
    c = scores.amax(-1, keepdim=True)
    w = torch.exp(scores - c)
    fq, fk = phi_q(q), phi_k(k[:, :, lin])  # (B, H, N, d'), (B, H, N − N/R, d')
    kv = fk.transpose(-1, -2) @ torch.cat([v[:, :, lin], torch.ones_like(v[:, :, lin, :1])], -1)
    read = fq @ kv  # (B, H, N, d + 1)
    num = w @ v[:, :, soft] + torch.exp(-c) * read[..., :-1]
    den = w.sum(-1, keepdim=True) + torch.exp(-c) * read[..., -1:]
    return num / den


@pytest.mark.parametrize("rate", [2, 3, 8])
def test_uniform_hybrid_flops_equal_the_counted_reference(rate):
    fm = FeatureMapConfig(hidden_dim=12, feature_dim=10)
    maps = FeatureMapPair(2, 8, fm)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    with torch.inference_mode():
        total, _ = counted(lambda: naive_uniform_hybrid(q, k, v, maps.phi_q, maps.phi_k, rate))
    assert total == uniform_hybrid_attention_flops(1, 2, 30, 8, rate=rate, feature_map=fm).total
    register_cpu_flash_flop_formula()
    with torch.inference_mode():  # the library's kernel counts the same
        kernel, _ = counted(
            lambda: uniform_hybrid_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, rate=rate)
        )
    assert kernel == total


@pytest.mark.parametrize("tokens", [1, 7, 30])
def test_linear_only_flops_equal_the_counted_kernel(tokens):
    fm = FeatureMapConfig(hidden_dim=12, feature_dim=10)
    maps = FeatureMapPair(2, 8, fm)
    q, k, v = (torch.randn(1, 2, tokens, 8) for _ in range(3))
    with torch.inference_mode():
        total, _ = counted(lambda: linear_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k))
    flops = linear_attention_flops(1, 2, tokens, 8, feature_map=fm)
    assert total == flops.total
    assert flops.softmax == 0
    with pytest.raises(ValueError, match="tokens must be an integer ≥ 1"):
        linear_attention_flops(1, 2, 0, 8)


def test_uniform_hybrid_at_rate_one_is_softmax_attention():
    flops = uniform_hybrid_attention_flops(1, 2, 30, 8, rate=1)
    assert flops.total == flops.softmax == softmax_attention_flops(1, 2, 30, 8)


def test_paper_accounting_adds_phi_on_every_token_and_per_chunk_state_rebuilds():
    fm = FeatureMapConfig(hidden_dim=12, feature_dim=10)
    kw = dict(chunk_frames=2, overlap_frames=1, feature_map=fm)
    ours = rehyat_attention_flops(1, 2, 7, 6, 8, **kw)
    paper = rehyat_attention_flops(1, 2, 7, 6, 8, linear_accounting="paper", **kw)
    assert paper.softmax == ours.softmax
    phi_per_token = 2 * (8 * 12 + 12 * 10) * 2  # two heads
    assert paper.feature_maps == phi_per_token * 2 * 7 * 6  # φq and φk on all 42 tokens
    # linear sets per chunk (frames): [], [0], [0,1,2], [0..4] → 0+1+3+5 = 9 frames summed, 5 absorbed once
    per_key = 2 * 10 * 9 * 2
    assert paper.linear - ours.linear == per_key * (9 - 5) * 6
    with pytest.raises(ValueError, match="linear_accounting"):
        rehyat_attention_flops(1, 2, 7, 6, 8, linear_accounting="exact", **kw)


def test_uniform_hybrid_flops_refuse_bad_rates():
    with pytest.raises(ValueError, match="rate"):
        uniform_hybrid_attention_flops(1, 2, 30, 8, rate=0)
