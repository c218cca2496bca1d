"""The bf16 / fp16 path of the op: low-precision φ and linear-part matmuls, fp32 S and z.

Error measure. ``u`` is the unit roundoff of the activations' dtype (bf16: 2⁻⁸, fp16: 2⁻¹¹). The
reference is the exact (fp64, naive) result on the SAME low-precision inputs, so the bounds measure
what the low-precision path adds, not the rounding of the inputs.

Why the bounds hold. The output is a convex combination of values (softmax weights and the
non-negative kernel φq·φk), so ``|y| ≤ max|v|``. Rounding the exact output to the activations'
dtype alone costs ≈ u/2 relative (measured ≈ 0.43u rms). Each low-precision step — φ's two MLP
layers, the update ``φkᵀ[v, 1]`` and the readout ``φq·[S, z]`` (one rounding of a sum accumulated in
fp32), bf16 softmax attention — adds a relative error of O(u) to terms that are then averaged
with non-negative weights, so the errors do not grow with the number of tokens or chunks: S and z
are sums of per-chunk updates kept in fp32, where each update is rounded once (≤ u/2 of that
update's own magnitude). Measured: ≈ 0.6–0.7u rms and ≤ 0.31u·max|v| max over seeds, feature
scales (init bias −8 … 20) and lengths up to 30 frames; asserted with a 2× margin: rms ≤ 1.5u,
max ≤ u·max|v|. Gradients (sums over every token) stay ≤ ≈ 4u normwise; asserted ≤ 8u.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.ops import rehyat_attention, rehyat_attention_naive

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
B, H, D, TC, TO = 1, 2, 64, 3, 1


def setup(dtype, *, frames=12, tokens_per_frame=16, init_bias=-3.0, seed=0):
    """Low-precision q, k, v (Wan-like unit scale), fp32 maps, and the exact fp64 reference."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, frames * tokens_per_frame, D, generator=gen).to(dtype) for _ in range(3))
    maps = FeatureMapPair(H, D, FeatureMapConfig(hidden_dim=64, feature_dim=32, init_bias=init_bias))
    with torch.no_grad():  # move φq and φk apart, as distillation does
        for param in maps.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    kw = dict(tokens_per_frame=tokens_per_frame, chunk_frames=TC, overlap_frames=TO)
    exact_maps = copy.deepcopy(maps).double()
    with torch.no_grad():
        exact, exact_state = rehyat_attention_naive(
            q.double(), k.double(), v.double(), phi_q=exact_maps.phi_q, phi_k=exact_maps.phi_k,
            output_final_state=True, **kw)
    return q, k, v, maps, kw, exact, exact_state


def errors(got, exact, v):
    """(rms relative error, max error / max|v|) of ``got`` against ``exact``."""
    diff = got.double() - exact
    return float(diff.norm() / exact.norm()), float(diff.abs().max() / v.double().abs().max())


@torch.no_grad()
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("init_bias", [-8.0, -3.0, 0.0])
def test_low_precision_error_is_a_few_units_of_roundoff(dtype, init_bias):
    u = UNIT_ROUNDOFF[dtype]
    q, k, v, maps, kw, exact, exact_state = setup(dtype, init_bias=init_bias)
    fp32 = rehyat_attention(q.float(), k.float(), v.float(), phi_q=maps.phi_q, phi_k=maps.phi_k, **kw)
    assert errors(fp32, exact, v)[0] < 1e-5  # the fp32 path (unchanged) is the accurate one
    rounding_alone = errors(fp32.to(dtype), exact, v)[0]
    outs = {}
    for mode in ("parallel", "recurrent"):
        out, state = rehyat_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, mode=mode,
                                      output_final_state=True, **kw)
        assert out.dtype == dtype and torch.isfinite(out).all()
        rms, worst = errors(out, exact, v)
        assert rms <= 1.5 * u, (mode, rms / u)
        assert worst <= 1.0 * u, (mode, worst / u)
        assert rms <= 2.5 * rounding_alone, (rms / u, rounding_alone / u)  # the path adds < 1.5× rounding
        rms32, worst32 = errors(out, fp32.double(), v)  # against the fp32 path: the same bound
        assert rms32 <= 1.5 * u and worst32 <= 1.0 * u
        # S and z are kept in fp32. Their error follows φ's pre-activation: ψ ≈ e^pre for pre ≪ 0, so
        # rounding pre in the MLP (≤ u/2·|pre|) is a relative error ≈ |pre|·u/2 in ψ (twice that in
        # the squared part). It is common to S and z and cancels in the output's ratio.
        assert state.kv.dtype == state.k_sum.dtype == torch.float32
        assert state.k_overlap.dtype == state.v_overlap.dtype == dtype
        for got, want in ((state.kv, exact_state.kv), (state.k_sum, exact_state.k_sum)):
            rel = float((got.double() - want.double()).norm() / want.double().norm())
            assert rel <= (1.5 + 0.75 * abs(init_bias)) * u, rel / u
        outs[mode] = out
    # parallel and recurrent absorb the same frame segments: they agree far below u.
    assert errors(outs["recurrent"], outs["parallel"].double(), v)[1] <= u / 16


@torch.no_grad()
@pytest.mark.parametrize("dtype", LOW)
def test_large_features_and_sums_do_not_overflow(dtype):
    """Features ≈ 20² and z ≈ 3·10⁵ (beyond fp16's 65504): finite, same bound (fp16 scales by powers of 2)."""
    u = UNIT_ROUNDOFF[dtype]
    q, k, v, maps, kw, exact, _ = setup(dtype, frames=12, tokens_per_frame=64, init_bias=20.0, seed=1)
    out, state = rehyat_attention(q, k, v, phi_q=maps.phi_q, phi_k=maps.phi_k, output_final_state=True, **kw)
    assert float(state.k_sum.max()) > 4 * torch.finfo(torch.float16).max
    assert torch.isfinite(out).all()
    rms, worst = errors(out, exact, v)
    assert rms <= 1.5 * u and worst <= 1.0 * u, (rms / u, worst / u)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_gradients_flow_in_low_precision(dtype, mode):
    """Backward through the low-precision path: q/k/v gradients in that dtype, φ's in fp32, ≤ 8u."""
    u = UNIT_ROUNDOFF[dtype]
    q, k, v, maps, kw, _, _ = setup(dtype, frames=9)
    exact_maps = copy.deepcopy(maps).double()
    exact_in = [t.double().requires_grad_(True) for t in (q, k, v)]
    low_in = [t.clone().requires_grad_(True) for t in (q, k, v)]
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = rehyat_attention_naive(*exact_in, phi_q=exact_maps.phi_q, phi_k=exact_maps.phi_k, **kw)
    (exact * weight).sum().backward()
    out = rehyat_attention(*low_in, phi_q=maps.phi_q, phi_k=maps.phi_k, mode=mode, **kw)
    (out.double() * weight).sum().backward()
    pairs = list(zip(low_in, exact_in, strict=True)) + list(
        zip(maps.parameters(), exact_maps.parameters(), strict=True))
    for got, want in pairs:
        assert got.grad is not None and torch.isfinite(got.grad).all()
        assert got.grad.dtype == (dtype if got.dtype == dtype else torch.float32)
        rel = float((got.grad.double() - want.grad).norm() / want.grad.norm())
        assert rel <= 8 * u, rel / u


def test_autocast_training_step_takes_the_low_precision_path():
    """Under autocast (training on CUDA; CPU here) bf16 projections feed the op: same numbers, gradients."""
    torch.manual_seed(0)
    p, frames = 8, 6
    x = torch.randn(1, frames * p, 32)
    proj = torch.nn.Linear(32, 3 * H * 16)
    maps = FeatureMapPair(H, 16, FeatureMapConfig(hidden_dim=16, feature_dim=8, init_bias=-2.0))
    kw = dict(phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=2, overlap_frames=1)

    def heads(t):
        return t.view(1, frames * p, H, 16).transpose(1, 2)  # (B, H, N, d)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = (heads(t) for t in proj(x).chunk(3, dim=-1))
        assert q.dtype == torch.bfloat16
        out = rehyat_attention(q, k, v, **kw)
    out.float().square().mean().backward()
    with torch.no_grad():
        plain = rehyat_attention(q.detach(), k.detach(), v.detach(), **kw)
    torch.testing.assert_close(out.detach(), plain, rtol=0, atol=2.0**-8 * float(v.detach().abs().max()))
    for param in (*maps.parameters(), *proj.parameters()):
        assert param.grad is not None and param.grad.dtype == torch.float32
        assert torch.isfinite(param.grad).all() and float(param.grad.abs().max()) > 0


def test_dtype_policy_helpers():
    """Which activations take the low-precision path, and which dtype φ's MLP runs in."""
    from rehyat.feature_maps import mlp_dtype
    from rehyat.ops.kernels import accumulation_dtype, is_low_precision

    assert is_low_precision(torch.bfloat16) and is_low_precision(torch.float16)
    assert not is_low_precision(torch.float32) and not is_low_precision(torch.float64)
    assert accumulation_dtype(torch.bfloat16) == torch.float32
    assert accumulation_dtype(torch.float64) == torch.float64
    assert mlp_dtype(torch.bfloat16, torch.float32) == torch.bfloat16  # activations' dtype
    assert mlp_dtype(torch.float32, torch.float32) == torch.float32  # unchanged fp32 path
    assert mlp_dtype(torch.float64, torch.float32) == torch.float32  # the parameters' dtype, as before
    assert mlp_dtype(torch.float32, torch.bfloat16) == torch.bfloat16
