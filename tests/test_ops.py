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
from rehyat.ops.scratch import Scratch, inference_scratch

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


# Autograd on runs the differentiable path; off runs the inference path (in-place maths in reused
# scratch buffers, outputs written straight into place). Both must match the reference.
AUTOGRAD = [pytest.param(True, id="autograd"), pytest.param(False, id="inference")]


@pytest.mark.parametrize("autograd", AUTOGRAD)
@pytest.mark.parametrize(("shape", "tc", "to", "causal"), GRID)
def test_fast_forms_match_naive(shape, tc, to, causal, autograd):
    b, h, p, d, t = shape
    q, k, v, maps = make_inputs(*shape)
    kw = op_kwargs(maps, p, tc, to, causal)
    ref = rehyat_attention_naive(q, k, v, **kw)
    with torch.set_grad_enabled(autograd):
        out = rehyat_attention_parallel(q, k, v, **kw)
        recurrent = rehyat_attention_recurrent(q, k, v, **kw) if causal else None
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if causal:
        torch.testing.assert_close(recurrent, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autograd", AUTOGRAD)
@pytest.mark.parametrize(("shape", "tc", "to"), [(s, tc, to) for s, tc, to, c in GRID if c])
def test_final_state_matches_naive(shape, tc, to, autograd):
    b, h, p, d, t = shape
    q, k, v, maps = make_inputs(*shape)
    kw = op_kwargs(maps, p, tc, to, True)
    _, ref_state = rehyat_attention_naive(q, k, v, output_final_state=True, **kw)
    for form in (rehyat_attention_parallel, rehyat_attention_recurrent):
        with torch.set_grad_enabled(autograd):
            _, state = form(q, k, v, output_final_state=True, **kw)
        assert_states_close(state, ref_state)
    assert ref_state.frames_seen == t
    assert ref_state.overlap_frames(p) == min(to, t)


@pytest.mark.parametrize("autograd", AUTOGRAD)
@pytest.mark.parametrize(("tc", "to", "split"), [(1, 0, 3), (2, 1, 4), (3, 1, 3), (3, 2, 6), (2, 3, 2)])
@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_continuing_from_a_state_equals_one_pass(tc, to, split, mode, autograd):
    """Running frames [0, s) then [s, T) from the carried state == one pass (s a chunk boundary)."""
    b, h, p, d, t = 2, 2, 3, 8, 9
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=1)
    kw = op_kwargs(maps, p, tc, to, True)
    whole, whole_state = rehyat_attention_naive(q, k, v, output_final_state=True, **kw)
    cut = split * p
    with torch.set_grad_enabled(autograd):
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
                               phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=3, overlap_frames=2)
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


@pytest.mark.parametrize("autograd", AUTOGRAD)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_low_precision_with_large_logits(dtype, mode, autograd):
    """bf16 / fp16 inputs with |logits| > 50: finite and close to the fp32 result."""
    b, h, p, d, t = 1, 2, 4, 16, 6
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=5)
    q = q * 4.0
    k = k * 4.0  # logits q·k/√d reach ~±60
    logits = (q @ k.transpose(-1, -2)) / d**0.5
    assert float(logits.abs().max()) > 50
    kw = op_kwargs(maps, p, 2, 1, True)
    ref = rehyat_attention(q, k, v, mode=mode, **kw)
    with torch.set_grad_enabled(autograd):
        out = rehyat_attention(q.to(dtype), k.to(dtype), v.to(dtype), mode=mode, **kw)
        _, state = rehyat_attention(q.to(dtype), k.to(dtype), v.to(dtype), mode=mode,
                                    output_final_state=True, **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    assert state.kv.dtype == torch.float32 and state.k_sum.dtype == torch.float32


@torch.no_grad()
def test_steps_sharing_a_scratch_keep_their_outputs_and_states():
    """Outputs and states returned by steps that share one Scratch are never overwritten by later steps."""
    b, h, p, d, t = 1, 1, 3, 8, 9  # B = H = 1: token slices of the window are contiguous views
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=6)
    kw = op_kwargs(maps, p, 2, 1, True)
    ref, ref_state = rehyat_attention_naive(q, k, v, output_final_state=True, **kw)
    scratch, state, outs, states = Scratch(), RecurrentState.empty(k), [], []
    for chunk in chunk_layout(t, 2, 1):
        rows = slice(chunk.frame_start * p, chunk.frame_end * p)
        out, state = rehyat_step(q[:, :, rows], k[:, :, rows], v[:, :, rows], state, phi_q=maps.phi_q,
                                 phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=2, overlap_frames=1,
                                 scratch=scratch)
        outs.append(out)
        states.append(state)
    assert scratch.nbytes > 0
    torch.testing.assert_close(torch.cat(outs, dim=2), ref, atol=1e-5, rtol=1e-5)
    assert_states_close(states[-1], ref_state)
    # Each intermediate state still equals the reference state after its frames.
    _, mid_state = rehyat_attention_naive(q[:, :, :6 * p], k[:, :, :6 * p], v[:, :, :6 * p],
                                          output_final_state=True, **kw)
    assert_states_close(states[2], mid_state)


def test_scratch_reuses_and_grows_its_buffers():
    scratch = Scratch()
    a = scratch.get("x", (2, 3), dtype=torch.float32, device=torch.device("cpu"))
    b = scratch.get("x", (3, 2), dtype=torch.float32, device=torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and b.shape == (3, 2) and b.is_contiguous()
    c = scratch.get("x", (4, 4), dtype=torch.float32, device=torch.device("cpu"))  # grows
    assert c.shape == (4, 4) and scratch.nbytes == 16 * 4
    d = scratch.get("x", (4, 4), dtype=torch.float64, device=torch.device("cpu"))  # new dtype
    assert d.dtype == torch.float64 and scratch.nbytes == 16 * 8
    other = scratch.get("y", (1,), dtype=torch.float32, device=torch.device("cpu"))
    assert other.data_ptr() != d.data_ptr()
    with torch.no_grad():
        assert isinstance(inference_scratch(None), Scratch)
        assert inference_scratch(scratch) is scratch
    with torch.enable_grad():  # gradients need fresh tensors
        assert inference_scratch(None) is None and inference_scratch(scratch) is None


@torch.no_grad()
@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_calls_sharing_a_scratch_match_naive(mode):
    """One Scratch across calls of different sizes (the blocks of one forward) changes no number."""
    scratch = Scratch()
    for shape, seed in (((1, 2, 3, 8, 7), 7), ((2, 2, 5, 8, 4), 8), ((1, 2, 3, 8, 7), 9)):
        b, h, p, d, t = shape
        q, k, v, maps = make_inputs(*shape, seed=seed)
        kw = op_kwargs(maps, p, 2, 1, True)
        out = rehyat_attention(q, k, v, mode=mode, scratch=scratch, **kw)
        torch.testing.assert_close(out, rehyat_attention_naive(q, k, v, **kw), atol=1e-5, rtol=1e-5)
    assert (scratch.nbytes > 0) == (mode != "naive")


def test_state_detach_and_to():
    q, k, v, maps = make_inputs(1, 2, 3, 8, 4, seed=11, requires_grad=True)
    _, state = rehyat_attention(q, k, v, output_final_state=True, **op_kwargs(maps, 3, 2, 1, True))
    assert state.kv.requires_grad and state.k_overlap.requires_grad
    cut = state.detach()
    assert not any(t.requires_grad for t in (cut.kv, cut.k_sum, cut.k_overlap, cut.v_overlap))
    assert cut.frames_seen == state.frames_seen == 4
    torch.testing.assert_close(cut.kv, state.kv.detach(), rtol=0, atol=0)
    half = cut.to(dtype=torch.float16)  # the overlap K/V follow dtype; S and z stay fp32
    assert half.k_overlap.dtype == half.v_overlap.dtype == torch.float16
    assert half.kv.dtype == half.k_sum.dtype == torch.float32
    assert half.frames_seen == 4
    moved = cut.to("meta")
    assert all(t.device.type == "meta" for t in (moved.kv, moved.k_sum, moved.k_overlap, moved.v_overlap))
    # A state moved to fp16 and back still continues the sequence like the original (to fp16 rounding).
    q2, k2, v2, _ = make_inputs(1, 2, 3, 8, 2, seed=12)
    kw = op_kwargs(maps, 3, 2, 1, True)
    with torch.no_grad():
        ref = rehyat_attention(q2, k2, v2, initial_state=cut, **kw)
        got = rehyat_attention(q2, k2, v2, initial_state=half.to(dtype=torch.float32), **kw)
    torch.testing.assert_close(got, ref, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("autograd", AUTOGRAD)
@pytest.mark.parametrize("to", [0, 1, 2, 4])
@pytest.mark.parametrize("split", [0, 3, 6])
def test_steps_from_any_chunk_boundary_equal_the_parallel_form(split, to, autograd):
    """Parallel over [0, s) then recurrent steps from s (s on a boundary), partial last chunk: one pass."""
    b, h, p, d, t, tc = 2, 2, 3, 8, 8, 3  # chunks [0,3) [3,6) [6,8): the last one is partial
    q, k, v, maps = make_inputs(b, h, p, d, t, seed=13)
    kw = op_kwargs(maps, p, tc, to, True)
    whole, whole_state = rehyat_attention_parallel(q, k, v, output_final_state=True, **kw)
    cut = split * p
    with torch.set_grad_enabled(autograd):
        outs, state = [], RecurrentState.empty(k)
        if split:
            first, state = rehyat_attention_parallel(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut],
                                                     output_final_state=True, **kw)
            outs.append(first)
        for start in range(split, t, tc):
            rows = slice(start * p, min(start + tc, t) * p)
            out, state = rehyat_step(q[:, :, rows], k[:, :, rows], v[:, :, rows], state, phi_q=maps.phi_q,
                                     phi_k=maps.phi_k, tokens_per_frame=p, chunk_frames=tc, overlap_frames=to)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, atol=1e-5, rtol=1e-5)
    assert_states_close(state, whole_state)
    assert state.frames_seen == t  # ends inside a chunk: no further continuation is accepted
    with pytest.raises(ValueError, match="a continuation must start on a chunk boundary"):
        rehyat_step(q[:, :, :p], k[:, :, :p], v[:, :, :p], state, phi_q=maps.phi_q, phi_k=maps.phi_k,
                    tokens_per_frame=p, chunk_frames=tc, overlap_frames=to)
