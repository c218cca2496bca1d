"""Feature maps: positivity for any input, parameter count, a sensible initial kernel."""

from __future__ import annotations

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair, HeadwiseFeatureMap, HybridAttentionConfig
from rehyat.feature_maps import feature_map_parameter_count


def test_default_pair_has_paper_size_for_wan_1_3b():
    pair = FeatureMapPair(12, 128)
    count = sum(p.numel() for p in pair.parameters())
    assert count == feature_map_parameter_count(12, 128, FeatureMapConfig())
    assert 2.3e6 < count < 2.5e6  # paper: ≈2.4 M per converted block


@pytest.mark.parametrize("magnitude", [1e-6, 1.0, 50.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_strictly_positive_and_finite(magnitude, dtype):
    torch.manual_seed(0)
    pair = FeatureMapPair(2, 16, FeatureMapConfig(hidden_dim=32, feature_dim=16))
    with torch.no_grad():  # adversarial weights: large and of both signs
        for param in pair.parameters():
            param.normal_(0.0, 3.0)
    x = (torch.randn(2, 2, 64, 16) * magnitude).to(dtype)
    fq, fk = pair.phi_q(x), pair.phi_k(-x)
    assert fq.dtype == torch.float32 and fq.shape == (2, 2, 64, 16)
    assert (fq > 0).all() and (fk > 0).all()
    kernel = fq @ fk.transpose(-1, -2)
    assert torch.isfinite(kernel).all() and (kernel > 0).all()


def test_initial_kernel_is_sensible():
    torch.manual_seed(0)
    pair = FeatureMapPair(12, 128)
    q, k = torch.randn(2, 1, 12, 256, 128)
    with torch.no_grad():
        kernel = pair.phi_q(q) @ pair.phi_k(k).transpose(-1, -2)  # (1, 12, 256, 256)
    assert torch.isfinite(kernel).all() and (kernel > 0).all()
    mean = float(kernel.mean())
    assert 1e-4 < mean < 1e-2, mean  # the size of a softmax weight over ~10²–10⁴ keys
    spread = float(kernel.std() / kernel.mean())
    assert spread > 0.01, spread  # depends on the inputs, not a constant
    logits = (q @ k.transpose(-1, -2)).flatten()
    corr = float(torch.corrcoef(torch.stack([logits, kernel.flatten()]))[0, 1])
    assert corr > 0.05, corr  # grows with q·k, like the softmax kernel it will be distilled to


def test_polynomial_parts_follow_the_degree():
    torch.manual_seed(0)
    fmap = HeadwiseFeatureMap(1, 4, FeatureMapConfig(hidden_dim=8, feature_dim=6, degree=3))
    x = torch.randn(1, 1, 5, 4)
    hidden = torch.nn.functional.silu(x[0, 0] @ fmap.weight1[0] + fmap.bias1[0])
    psi = torch.nn.functional.softplus(hidden @ fmap.weight2[0] + fmap.bias2[0]) + fmap.config.eps
    expected = torch.cat([psi[:, :2], psi[:, 2:4] ** 2, psi[:, 4:] ** 3], dim=-1)
    torch.testing.assert_close(fmap(x)[0, 0], expected)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"feature_dim": 5}, "feature_dim must be a multiple of degree"),
    ({"degree": 0}, "degree must be an integer in"),
    ({"hidden_dim": 0}, "hidden_dim must be an integer ≥ 1"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"eps": 0.0}, r"eps must be a real number in \[1e-12, 1\]; got 0.0"),
    ({"eps": 1e-30}, r"eps must be a real number in \[1e-12, 1\]"),
    ({"eps": "1e-4"}, r"eps must be a real number in \[1e-12, 1\]; got '1e-4'"),
    ({"init_bias": float("nan")}, r"init_bias must be a real number in \[-50, 50\]; got nan"),
    ({"init_bias": float("inf")}, r"init_bias must be a real number in \[-50, 50\]"),
    ({"init_bias": True}, r"init_bias must be a real number"),
])
def test_config_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        FeatureMapConfig(**kwargs)


def test_shared_validators_name_the_parameter_and_range():
    from rehyat.config import require_int, require_real
    from rehyat.hybrid import FrameGrid
    from rehyat.weights import BaseModelInfo

    require_int("n", 3, low=1, high=3)
    require_real("x", 0.5, low=0.0, high=1.0)
    for value in (0, True, 2.0, "1"):
        with pytest.raises(ValueError, match=r"n must be an integer ≥ 1; got "):
            require_int("n", value, low=1)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 3\]; got 4"):
        require_int("n", 4, low=1, high=3)
    for value in (-0.1, float("nan"), "0.5", False):
        with pytest.raises(ValueError, match=r"x must be a real number in \[0, 1\]; got "):
            require_real("x", value, low=0.0, high=1.0)
    with pytest.raises(ValueError, match=r"FrameGrid.width must be an integer ≥ 1; got True"):
        FrameGrid(2, 3, True)
    with pytest.raises(ValueError, match=r"BaseModelInfo.num_layers must be an integer ≥ 1; got 0"):
        BaseModelInfo(dim=16, num_heads=2, num_layers=0)


def test_smallest_eps_keeps_the_kernel_positive_when_softplus_underflows():
    """At the smallest allowed eps, features whose softplus underflows still give φq·φk > 0."""
    cfg = FeatureMapConfig(hidden_dim=4, feature_dim=4, eps=1e-12, init_bias=-50.0)
    fmap = HeadwiseFeatureMap(1, 4, cfg)
    with torch.no_grad():
        fmap.weight2.zero_()  # ψ = softplus(-50) + eps: softplus(-50) ≈ 2e-22 is below eps's ulp
    x = torch.randn(1, 1, 3, 4)
    with torch.no_grad():
        features = fmap(x)  # (1, 1, 3, 4)
    kernel = features[0, 0] @ features[0, 0].T  # (3, 3)
    assert torch.all(kernel > 0)
    assert float(kernel.min()) >= 2 * 1e-24 * 0.99  # (d'/P)·eps²


def test_configs_round_trip_through_dicts():
    cfg = HybridAttentionConfig(chunk_frames=5, overlap_frames=2, causal=False,
                                feature_map=FeatureMapConfig(hidden_dim=64))
    assert HybridAttentionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown HybridAttentionConfig field"):
        HybridAttentionConfig.from_dict({"chunk": 3})
    with pytest.raises(ValueError, match="overlap_frames must be an integer ≥ 0"):
        HybridAttentionConfig(overlap_frames=-1)


def test_feature_map_rejects_wrong_input():
    fmap = HeadwiseFeatureMap(2, 8)
    with pytest.raises(ValueError, match=r"feature map expects \(B, 2, n, 8\)"):
        fmap(torch.randn(1, 3, 4, 8))


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
def test_inference_paths_equal_the_differentiable_path(activation):
    """In-place inference, with and without a Scratch, gives the autograd path's numbers."""
    from rehyat.ops.scratch import Scratch

    torch.manual_seed(0)
    fmap = HeadwiseFeatureMap(3, 8, FeatureMapConfig(hidden_dim=16, feature_dim=12, degree=3,
                                                     activation=activation))
    x = torch.randn(2, 3, 10, 8)
    expected = fmap(x)
    assert expected.requires_grad
    scratch = Scratch()
    with torch.no_grad():
        plain = fmap(x)
        first = fmap(x, scratch=scratch).clone()
        held = scratch.nbytes
        again = fmap(x[:, :, :4], scratch=scratch)  # smaller request: same buffers
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again, expected[:, :, :4], atol=1e-6, rtol=1e-6)
    assert held > 0 and scratch.nbytes == held


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_run_the_mlp_in_their_dtype(dtype):
    """bf16 / fp16 inputs: both MLP layers in that dtype, softplus and powers in fp32, fp32 features;
    the in-place inference path (with a Scratch) gives the same numbers."""
    from rehyat.ops.scratch import Scratch

    torch.manual_seed(0)
    fmap = HeadwiseFeatureMap(2, 8, FeatureMapConfig(hidden_dim=16, feature_dim=12, degree=3))
    x = torch.randn(2, 2, 5, 8).to(dtype)
    xh = x.transpose(0, 1).reshape(2, 10, 8)  # (H, B·n, d)
    w1, b1, w2, b2 = (t.detach().to(dtype) for t in (fmap.weight1, fmap.bias1, fmap.weight2, fmap.bias2))
    pre = torch.baddbmm(b2, torch.nn.functional.silu(torch.baddbmm(b1, xh, w1)), w2)  # in dtype
    psi = torch.nn.functional.softplus(pre.float()) + fmap.config.eps
    expected = torch.cat([psi[..., :4], psi[..., 4:8] ** 2, psi[..., 8:] ** 3], dim=-1)
    expected = expected.reshape(2, 2, 5, 12).transpose(0, 1)  # (B, H, n, d')
    got = fmap(x)
    assert got.dtype == torch.float32 and got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(fmap(x, scratch=Scratch()), expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(fmap(x), expected, rtol=1e-6, atol=0)
    fmap(x).sum().backward()  # gradients reach the fp32 parameters through the low-precision MLP
    assert fmap.weight1.grad.dtype == torch.float32 and float(fmap.weight1.grad.abs().max()) > 0


def test_fp16_saturates_instead_of_overflowing():
    """A hidden layer beyond fp16's range saturates at ±65504: features stay finite and positive."""
    fmap = HeadwiseFeatureMap(1, 4, FeatureMapConfig(hidden_dim=4, feature_dim=4))
    with torch.no_grad():
        fmap.weight1.fill_(1e3)
    x = torch.full((1, 1, 2, 4), 60.0, dtype=torch.float16)  # hidden = 4·60·1e3 = 2.4e5 > 65504
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            features = fmap(x)
        assert torch.isfinite(features).all() and (features > 0).all()
