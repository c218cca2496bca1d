"""The parallel and recurrent forms of the ReHyAt op against the fp64 naive reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.ops import (
    RecurrentState,
    chunk_layout,
    rehyat_attention,
    rehyat_attention_naive,
    rehyat_attention_parallel,
    rehyat_attention_recurrent,
    rehyat_step,
)

SMALL_MAP = FeatureMapConfig(hidden_dim=12, feature_dim=8, init_bias=-1.0)
# (B, H, P, d, T): T=7 leaves a partial last chunk for Tc ∈ {2, 3, 5}; T=1 is a single frame.
SHAPES = [(1, 1, 2, 8, 7), (2, 3, 3, 16, 6), (1, 2, 1, 4, 1)]
GRID = list(itertools.product(SHAPES, [1, 2, 3, 5], [0, 1, 2, 3], [True, False]))


def make_inputs(b, h, p, d, t, *, seed=0, dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t * p, d, generator=gen, dtype=dtype) for _ in range(3))
    maps = FeatureMapPair(h, d, SMALL_MAP)
    with torch.no_grad():  # random but seed-fixed weights, well away from the init
        for param in maps.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    if requires_grad:
        for t_ in (q, k, v):
            t_.requires_grad_(True)
    return q, k, v, maps


def op_kwargs(maps, p, tc, to, causal):
    return dict(phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=tc,
                overlap_frames=to, causal=causal)


def assert_states_close(a: RecurrentState, b: RecurrentState, atol=1e-5):
    assert a.frames_seen == b.frames_seen
    assert a.k_overlap.shape == b.k_overlap.shape
    torch.testing.assert_close(a.k_overlap, b.k_overlap, atol=0, rtol=0)
    torch.testing.assert_close(a.v_overlap, b.v_overlap, atol=0, rtol=0)
    if a.has_linear_part or b.has_linear_part:
        torch.testing.assert_close(a.kv, b.kv, atol=atol, rtol=1e-5)
        torch.testing.assert_close(a.k_sum, b.k_sum, atol=atol, rtol=1e-5)


@pytest.mark.parametrize(("shape", "tc", "to", "causal"), GRID)
def test_fast_forms_match_naive(shape, tc, to, causal):
    b, h, p, d, t = shape
    q, k, v, maps = make_inputs(*shape)
    kw = op_kwargs(maps, p, tc, to, causal)
    ref = rehyat_attention_naive(q, k, v, **kw)
    out = rehyat_attention_parallel(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if causal:
        torch.testing.assert_close(rehyat_attention_recurrent(q, k, v, **kw), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "tc", "to"), [(s, tc, to) for s, tc, to, c in GRID if c])
def test_final_state_matches_naive(shape, tc, to):
    b, h, p, d, t = shape
    q, k, v, maps = make_inputs(*shape)
    kw = op_kwargs(maps, p, tc, to, True)
    _, ref_state = rehyat_attention_naive(q, k, v, output_final_state=True, **kw)
    for form in (rehyat_attention_parallel, rehyat_attention_recurrent):
        _, state = form(q, k, v, output_final_state=True, **kw)
        assert_states_close(state, ref_state)
    assert ref_state.frames_seen == t
    assert ref_state.overlap_frames(p) == min(to, t)


@pytest.mark.parametrize(("tc", "to", "split"), [(1, 0, 3), (2, 1, 4), (3, 1, 3), (3, 2, 6), (2, 3, 2)])
@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_continuing_from_a_state_equals_one_pass(tc, to, split, mode):
    """Running frames [0, s) then [s, T) from the carried state == one pass (s a chunk boundary)."""
    b, h, p, d, t = 2, 2, 3, 8, 9
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=1)
    kw = op_kwargs(maps, p, tc, to, True)
    whole, whole_state = rehyat_attention_naive(q, k, v, output_final_state=True, **kw)
    cut = split * p
    first, state = rehyat_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], mode=mode,
                                    output_final_state=True, **kw)
    state = RecurrentState.from_tensors(state.to_tensors())  # through the serialised form
    second, end_state = rehyat_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], mode=mode,
                                         initial_state=state, output_final_state=True, **kw)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, atol=1e-5, rtol=1e-5)
    assert_states_close(end_state, whole_state)


@pytest.mark.parametrize(("tc", "to", "causal"), [(1, 0, True), (2, 1, True), (3, 2, True), (2, 3, True),
                                                 (2, 1, False), (3, 0, False), (9, 1, True)])
def test_parallel_gradients_match_naive(tc, to, causal):
    b, h, p, d, t = 2, 2, 3, 8, 7
    grads = {}
    for name, form in (("naive", rehyat_attention_naive), ("parallel", rehyat_attention_parallel)):
        q, k, v, maps = make_inputs(b, h, p, d, t, seed=2, requires_grad=True)
        out = form(q, k, v, **op_kwargs(maps, p, tc, to, causal))
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        (out * weight).sum().backward()
        grads[name] = [q.grad, k.grad, v.grad, *(prm.grad for prm in maps.parameters())]
    for i, (ref, got) in enumerate(zip(grads["naive"], grads["parallel"], strict=True)):
        if tc >= t and i >= 3:  # full softmax: φ receives no gradient in either form
            assert got is None or float(got.abs().max()) == 0.0
            continue
        assert got is not None and torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    if tc < t:
        assert any(float(g.abs().max()) > 0 for g in grads["parallel"][3:]), "φ got no gradient"


def test_gradcheck_parallel_fp64():
    b, h, p, d, t = 1, 2, 2, 4, 5
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=4, dtype=torch.float64, requires_grad=True)
    maps = maps.double()

    def fn(q_, k_, v_):
        return rehyat_attention_parallel(q_, k_, v_, **op_kwargs(maps, p, 2, 1, True))

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


def test_recurrent_step_memory_is_bounded():
    """The state holds S, z and exactly To frames of K/V, whatever the number of frames."""
    b, h, p, d, t = 1, 2, 4, 8, 40
    q, k, v, maps = make_inputs(b, h, p, d, t)
    state = RecurrentState.empty(k)
    sizes = []
    for chunk in chunk_layout(t, 3, 2):
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        _, state = rehyat_step(q[:, :, rows], k[:, :, rows], v[:, :, rows], state, phi_q=maps.phi_q,
                               phi_k=maps.phi_k, tokens_per_frame=p, overlap_frames=2)
        sizes.append(state.nbytes())
    assert state.frames_seen == t and state.overlap_frames(p) == 2
    assert len(set(sizes[1:])) == 1, sizes


def test_full_softmax_when_chunk_covers_everything():
    b, h, p, d, t = 1, 2, 3, 8, 4
    q, k, v, maps = make_inputs(b, h, p, d, t)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for mode in ("parallel", "recurrent", "naive"):
        out = rehyat_attention(q, k, v, mode=mode, **op_kwargs(maps, p, 4, 1, True))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_chunk_layout_matches_the_pinned_definition():
    chunks = chunk_layout(num_frames=8, chunk_frames=3, overlap_frames=1)
    assert [(c.frame_start, c.frame_end, c.window_start, c.window_end) for c in chunks] == [
        (0, 3, 0, 3), (3, 6, 2, 6), (6, 8, 5, 8)]
    assert [c.window_start for c in chunk_layout(6, 1, 3)] == [0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_low_precision_with_large_logits(dtype, mode):
    """bf16 / fp16 inputs with |logits| > 50: finite and close to the fp32 result."""
    b, h, p, d, t = 1, 2, 4, 16, 6
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=5)
    q = q * 4.0
    k = k * 4.0  # logits q·k/√d reach ~±60
    logits = (q @ k.transpose(-1, -2)) / d**0.5
    assert float(logits.abs().max()) > 50
    kw = op_kwargs(maps, p, 2, 1, True)
    ref = rehyat_attention(q, k, v, mode=mode, **kw)
    out = rehyat_attention(q.to(dtype), k.to(dtype), v.to(dtype), mode=mode, **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    _, state = rehyat_attention(q.to(dtype), k.to(dtype), v.to(dtype), mode=mode,
                                output_final_state=True, **kw)
    assert state.kv.dtype == torch.float32 and state.k_sum.dtype == torch.float32
