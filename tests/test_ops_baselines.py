"""The fidelity baselines' attention forms (linear-only, windowed softmax, uniform hybrid) against
their fp64 naive references, including gradients, and their place in HybridAttention."""

from __future__ import annotations

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.baselines import BaselineAttentionConfig
from rehyat.config import ConversionConfig, HybridAttentionConfig
from rehyat.hybrid import FrameGrid, HybridAttention, ReHyAtRun, build_attention
from rehyat.ops import rehyat_attention_naive
from rehyat.ops.linear_only import linear_attention, linear_attention_naive
from rehyat.ops.uniform_hybrid import (
    softmax_key_mask,
    uniform_hybrid_attention,
    uniform_hybrid_attention_naive,
)
from rehyat.ops.windowed_softmax import windowed_softmax_attention, windowed_softmax_attention_naive

SMALL_MAP = FeatureMapConfig(hidden_dim=12, feature_dim=8, init_bias=-1.0)
SHAPES = [(1, 1, 2, 8, 7), (2, 3, 3, 16, 6), (1, 2, 1, 4, 1)]  # (B, H, P, d, T)


def make_inputs(b, h, p, d, t, *, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t * p, d, generator=gen) for _ in range(3))
    maps = FeatureMapPair(h, d, SMALL_MAP)
    with torch.no_grad():
        for param in maps.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    if requires_grad:
        for x in (q, k, v):
            x.requires_grad_(True)
    return q, k, v, maps


def grads_of(fn, q, k, v, maps):
    out = fn()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * weights).sum().backward()
    tensors = [q, k, v, *maps.parameters()]
    grads = [torch.zeros_like(x) if x.grad is None else x.grad.clone() for x in tensors]
    for x in tensors:
        x.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_only_matches_naive_with_gradients(shape):
    q, k, v, maps = make_inputs(*shape, requires_grad=True)
    kw = dict(phi_q=maps.phi_q, phi_k=maps.phi_k)
    fast, fast_grads = grads_of(lambda: linear_attention(q, k, v, **kw), q, k, v, maps)
    ref, ref_grads = grads_of(lambda: linear_attention_naive(q, k, v, **kw), q, k, v, maps)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("tc", "to"), [(1, 0), (2, 1), (3, 1), (3, 4), (5, 2)])
def test_windowed_softmax_matches_naive_and_rehyat_without_linear_part(shape, tc, to):
    q, k, v, maps = make_inputs(*shape, requires_grad=True)
    p = shape[2]
    kw = dict(tokens_per_frame=p, chunk_frames=tc, overlap_frames=to)
    fast, fast_grads = grads_of(lambda: windowed_softmax_attention(q, k, v, **kw), q, k, v, maps)
    ref, ref_grads = grads_of(lambda: windowed_softmax_attention_naive(q, k, v, **kw), q, k, v, maps)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads[:3], ref_grads[:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # With φ ≈ 0 ReHyAt's joint normalisation leaves exactly the softmax windows.
    zero = lambda x: torch.zeros(*x.shape[:-1], 4, dtype=x.dtype)  # noqa: E731
    rehyat = rehyat_attention_naive(q, k, v, phi_q=zero, phi_k=zero, causal=True, **kw)
    torch.testing.assert_close(fast, rehyat.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rate", [1, 2, 3, 4])
def test_uniform_hybrid_matches_naive_with_gradients(shape, rate):
    q, k, v, maps = make_inputs(*shape, requires_grad=True)
    kw = dict(phi_q=maps.phi_q, phi_k=maps.phi_k, rate=rate)
    fast, fast_grads = grads_of(lambda: uniform_hybrid_attention(q, k, v, **kw), q, k, v, maps)
    ref, ref_grads = grads_of(lambda: uniform_hybrid_attention_naive(q, k, v, **kw), q, k, v, maps)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_uniform_hybrid_rate_one_is_softmax_and_mask_samples_every_rth_token():
    q, k, v, maps = make_inputs(1, 2, 3, 8, 4)
    logits = (q.double() @ k.double().transpose(-1, -2)) / 8**0.5
    full = (torch.softmax(logits, dim=-1) @ v.double()).float()  # dense fp64 softmax attention
    torch.testing.assert_close(
        uniform_hybrid_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, rate=1),
        full,
        atol=1e-5,
        rtol=1e-5,
    )
    assert softmax_key_mask(7, 3).tolist() == [True, False, False, True, False, False, True]


def test_baseline_ops_refuse_bad_arguments():
    q, k, v, maps = make_inputs(1, 1, 2, 8, 3)
    with pytest.raises(ValueError, match="rate must be an integer ≥ 1"):
        uniform_hybrid_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, rate=0)
    with pytest.raises(ValueError, match="tokens_per_frame=4"):
        windowed_softmax_attention(q, k, v, tokens_per_frame=4, chunk_frames=1, overlap_frames=0)
    with pytest.raises(ValueError, match="share one shape"):
        linear_attention(q, k[:, :, :2], v, phi_q=maps.phi_q, phi_k=maps.phi_k)


def test_config_variants_validate():
    assert HybridAttentionConfig().baseline is None and HybridAttentionConfig().uses_phi
    with pytest.raises(TypeError):
        HybridAttentionConfig(variant="linear_only")  # the product config has no baseline fields
    with pytest.raises(ValueError, match="variant must be one of"):
        BaselineAttentionConfig(variant="hedgehog")
    with pytest.raises(ValueError, match="variant must be one of"):
        BaselineAttentionConfig(variant="rehyat")
    with pytest.raises(ValueError, match="rate must be an integer ≥ 1"):
        BaselineAttentionConfig(variant="uniform_hybrid", rate=0)
    config = BaselineAttentionConfig(variant="uniform_hybrid", rate=4)
    assert config.baseline == "uniform_hybrid" and config.uses_phi
    assert not BaselineAttentionConfig(variant="windowed_softmax").uses_phi
    assert HybridAttentionConfig.from_dict(config.to_dict()) == config  # baseline φ files keep loading
    assert config != HybridAttentionConfig()
    like = BaselineAttentionConfig.like(HybridAttentionConfig(chunk_frames=5), "linear_only", causal=False)
    assert (like.chunk_frames, like.causal, like.variant, like.rate) == (5, False, "linear_only", 2)
    old = config.to_dict()
    del old["variant"], old["rate"]  # φ files written before the baselines existed
    assert HybridAttentionConfig.from_dict(old) == HybridAttentionConfig()
    with pytest.raises(ValueError, match="variant must be one of"):
        HybridAttentionConfig.from_dict({**old, "variant": "hedgehog"})


def test_rehyat_config_keeps_the_pinned_format_keys():
    """φ files, run identities and reports hold ``"variant": "rehyat", "rate": 2``: written as
    before, read back (the rate checked and ignored) — the baselines' fields moved out of the class."""
    config = HybridAttentionConfig(chunk_frames=2, feature_map=SMALL_MAP)
    data = config.to_dict()
    assert list(data) == ["chunk_frames", "overlap_frames", "causal", "feature_map", "variant", "rate"]
    assert (data["variant"], data["rate"]) == ("rehyat", 2)
    assert ConversionConfig(attention=config).to_dict()["attention"] == data
    assert HybridAttentionConfig.from_dict(data) == config
    assert HybridAttentionConfig.from_dict({**data, "rate": 4}) == config  # legacy slot: ignored
    with pytest.raises(ValueError, match="rate must be an integer ≥ 1"):
        HybridAttentionConfig.from_dict({**data, "rate": 0})
    with pytest.raises(ValueError, match="unknown HybridAttentionConfig field"):
        HybridAttentionConfig.from_dict({**data, "window": 3})
    baseline = ConversionConfig(attention=BaselineAttentionConfig.like(config, "linear_only"))
    assert ConversionConfig.from_dict(baseline.to_dict()) == baseline


@pytest.mark.parametrize(
    ("variant", "reference"),
    [
        ("linear_only", lambda q, k, v, m, p: linear_attention_naive(q, k, v, phi_q=m.phi_q, phi_k=m.phi_k)),
        (
            "uniform_hybrid",
            lambda q, k, v, m, p: uniform_hybrid_attention_naive(
                q, k, v, phi_q=m.phi_q, phi_k=m.phi_k, rate=3
            ),
        ),
        (
            "windowed_softmax",
            lambda q, k, v, m, p: windowed_softmax_attention_naive(
                q, k, v, tokens_per_frame=p, chunk_frames=2, overlap_frames=1
            ),
        ),
    ],
)
def test_hybrid_attention_runs_each_baseline_in_parallel_and_refuses_recurrent(variant, reference):
    config = BaselineAttentionConfig(
        chunk_frames=2, overlap_frames=1, feature_map=SMALL_MAP, variant=variant, rate=3
    )
    module = build_attention(2, 8, config, block_index=4)
    q, k, v, _ = make_inputs(1, 2, 3, 8, 5)
    grid = FrameGrid(5, 1, 3)
    out = module(q, k, v, ReHyAtRun(grid=grid))
    torch.testing.assert_close(out, reference(q, k, v, module.feature_maps, 3), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=f"block 4 runs the '{variant}' baseline, which has no recurrent"):
        module(q, k, v, ReHyAtRun(grid=grid, mode="recurrent"))


def test_baselines_are_built_off_the_product_class():
    baseline = BaselineAttentionConfig(feature_map=SMALL_MAP, variant="linear_only")
    assert type(build_attention(2, 8, HybridAttentionConfig(feature_map=SMALL_MAP), 0)) is HybridAttention
    assert type(build_attention(2, 8, baseline, 0)).__module__ == "rehyat.baselines.attention"
    with pytest.raises(ValueError, match="build the block's module with rehyat.hybrid.build_attention"):
        HybridAttention(2, 8, baseline, 0)


def test_windowed_softmax_baseline_trains_nothing_and_baselines_cannot_run_recurrently():
    from rehyat.config import check_recurrent_capable

    config = BaselineAttentionConfig(
        chunk_frames=2, overlap_frames=1, feature_map=SMALL_MAP, variant="windowed_softmax"
    )
    module = build_attention(1, 8, config, block_index=0)
    q, k, v, _ = make_inputs(1, 1, 2, 8, 5, requires_grad=True)
    module(q, k, v, ReHyAtRun(grid=FrameGrid(5, 1, 2))).sum().backward()
    assert q.grad is not None and all(p.grad is None for p in module.parameters())  # φ is not used
    for variant in ("linear_only", "windowed_softmax", "uniform_hybrid"):
        with pytest.raises(ValueError, match=f"uses the '{variant}' baseline"):
            check_recurrent_capable((0, 1), 2, BaselineAttentionConfig(variant=variant))
    check_recurrent_capable((0, 1), 2, HybridAttentionConfig())
    assert ConversionConfig(attention=config).attention.variant == "windowed_softmax"


def test_phi_files_written_with_the_legacy_keys_keep_loading():
    """The shipped φ (``"variant": "rehyat", "rate": 2`` in its conversion_config) loads as ReHyAt and
    its config serialises back to exactly what the file holds."""
    import json
    from pathlib import Path

    import safetensors

    import rehyat
    from rehyat.weights import load_phi_weights

    path = Path(rehyat.__file__).parent / "assets" / "teacher_phi.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()["conversion_config"])
    assert (stored["attention"]["variant"], stored["attention"]["rate"]) == ("rehyat", 2)
    phi = load_phi_weights(path)
    assert type(phi.config.attention) is HybridAttentionConfig
    assert phi.config.to_dict() == stored
