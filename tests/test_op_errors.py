"""Bad input to the op gets a clear error that names the parameter and the allowed range."""

from __future__ import annotations

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.ops import RecurrentState, rehyat_attention, rehyat_step

MAPS = FeatureMapPair(2, 8, FeatureMapConfig(hidden_dim=4, feature_dim=4))
QKV = torch.randn(3, 1, 2, 12, 8)


def call(q=None, k=None, v=None, **overrides):
    q = QKV[0] if q is None else q
    kw = dict(phi_q=MAPS.phi_q, phi_k=MAPS.phi_k, tokens_per_frame=3, chunk_frames=2, overlap_frames=1)
    kw.update(overrides)
    return rehyat_attention(q, QKV[1] if k is None else k, QKV[2] if v is None else v, **kw)


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"chunk_frames": 0}, r"chunk_frames must be an integer ≥ 1; got 0"),
    ({"chunk_frames": 1.5}, r"chunk_frames must be an integer ≥ 1"),
    ({"overlap_frames": -1}, r"overlap_frames must be an integer ≥ 0; got -1"),
    ({"tokens_per_frame": 5}, r"N=12 must be a positive multiple of tokens_per_frame=5"),
    ({"tokens_per_frame": 0}, r"tokens_per_frame must be an integer ≥ 1"),
    ({"mode": "recurrent", "causal": False}, r"mode='recurrent' requires causal=True"),
    ({"mode": "fast"}, r"mode must be one of \('parallel', 'recurrent', 'naive'\); got 'fast'"),
    ({"causal": False, "output_final_state": True}, r"need causal=True"),
])
def test_bad_arguments(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(**overrides)


def test_mismatched_shapes_dtypes_devices():
    with pytest.raises(ValueError, match=r"q, k, v must have the same shape"):
        call(k=QKV[1][:, :, :6])
    with pytest.raises(TypeError, match=r"q, k, v must share a dtype"):
        call(v=QKV[2].double())
    with pytest.raises(ValueError, match=r"q must be a 4-D tensor \(B, H, N, d\); got \(2, 12, 8\)"):
        call(q=QKV[0][0])
    with pytest.raises(ValueError, match=r"must be on one device"):
        call(k=QKV[1].to("meta"))


def test_bad_state():
    state = RecurrentState.empty(torch.randn(1, 3, 0, 8))
    with pytest.raises(ValueError, match=r"initial_state.kv has shape"):
        call(initial_state=state)
    with pytest.raises(ValueError, match=r"initial_state holds 6 overlap tokens"):
        call(initial_state=RecurrentState(
            kv=torch.zeros(1, 2, 0, 8), k_sum=torch.zeros(1, 2, 0),
            k_overlap=torch.zeros(1, 2, 6, 8), v_overlap=torch.zeros(1, 2, 6, 8), frames_seen=2))
    with pytest.raises(KeyError, match=r"recurrent state entries missing"):
        RecurrentState.from_tensors({"kv": torch.zeros(1)})


def test_feature_map_with_wrong_output_shape():
    with pytest.raises(ValueError, match=r"phi_q must map \(B, H, n, d\) to \(B, H, n, d'\)"):
        call(phi_q=lambda x: x[:, :, :1])
    with pytest.raises(ValueError, match=r"overlap_frames must be an integer ≥ 0; got -2"):
        rehyat_step(QKV[0], QKV[1], QKV[2], RecurrentState.empty(QKV[1]), phi_q=MAPS.phi_q,
                    phi_k=MAPS.phi_k, tokens_per_frame=3, chunk_frames=4, overlap_frames=-2)


def test_step_without_a_state():
    with pytest.raises(TypeError, match=r"state must be a RecurrentState \(RecurrentState.empty\(k\)"):
        rehyat_step(QKV[0], QKV[1], QKV[2], None, phi_q=MAPS.phi_q, phi_k=MAPS.phi_k,
                    tokens_per_frame=3, chunk_frames=4, overlap_frames=1)


WIDE = FeatureMapPair(2, 8, FeatureMapConfig(hidden_dim=4, feature_dim=6))


@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_feature_maps_of_different_widths(mode):
    with pytest.raises(ValueError, match=r"phi_q gives d'=6 features but .*d'=4"):
        call(phi_q=WIDE.phi_q, mode=mode)


@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_state_from_feature_maps_of_another_width(mode):
    _, state = call(phi_q=WIDE.phi_q, phi_k=WIDE.phi_k, output_final_state=True)
    assert state.feature_dim == 6
    with pytest.raises(ValueError, match=r"d'=4 features but .*d'=6"):
        call(initial_state=state, mode=mode)


def _step(frames: int, state: RecurrentState, chunk_frames: int = 3):
    p = 3
    q, k, v = (t[:, :, : frames * p] for t in torch.randn(3, 1, 2, 9 * p, 8))
    return rehyat_step(q, k, v, state, phi_q=MAPS.phi_q, phi_k=MAPS.phi_k, tokens_per_frame=p,
                       chunk_frames=chunk_frames, overlap_frames=1)


def test_step_refuses_a_continuation_off_a_chunk_boundary():
    """frames_seen=2 with Tc=3 (after a partial last chunk) was silently accepted and gave other numbers."""
    _, state = _step(2, RecurrentState.empty(torch.zeros(1, 2, 0, 8)))  # a partial last chunk
    assert state.frames_seen == 2
    with pytest.raises(ValueError, match=r"a continuation must start on a chunk boundary: "
                                         r"state.frames_seen=2 is not a multiple of chunk_frames=3"):
        _step(3, state)


def test_step_refuses_a_chunk_longer_than_chunk_frames():
    with pytest.raises(ValueError, match=r"at most chunk_frames=3 frames; got 6 frames"):
        _step(6, RecurrentState.empty(torch.zeros(1, 2, 0, 8)))


@pytest.mark.parametrize("mode", ["parallel", "recurrent", "naive"])
def test_op_refuses_a_misaligned_initial_state(mode):
    q, k, v = QKV[:, :, :, :6]  # 2 frames of P=3
    _, state = rehyat_attention(q, k, v, phi_q=MAPS.phi_q, phi_k=MAPS.phi_k, tokens_per_frame=3,
                                chunk_frames=3, overlap_frames=1, output_final_state=True)
    with pytest.raises(ValueError, match=r"initial_state.frames_seen=2 is not a multiple of chunk_frames=3"):
        call(initial_state=state, chunk_frames=3, mode=mode)
    call(initial_state=state, chunk_frames=2, mode=mode)  # a boundary for Tc=2: accepted


# ------------------------------------------------------------------------ non-finite input and scale


@pytest.mark.parametrize("tensor", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("token", [1, 7])  # a query of the first chunk (softmax only), one of a later chunk
@pytest.mark.parametrize("grad", [False, True])
def test_non_finite_input_gives_non_finite_output_alike_in_every_form(tensor, bad, token, grad):
    """NaN in → NaN out: the fused softmax kernels return 0 for all-NaN score rows; the op must not."""
    qkv = [t.clone() for t in QKV]
    qkv["qkv".index(tensor)][0, 1, token, 3] = bad
    outs = {}
    for mode in ("naive", "parallel", "recurrent"):
        with torch.set_grad_enabled(grad):
            outs[mode] = call(*qkv, mode=mode).detach()
    reference = outs.pop("naive")
    assert not torch.isfinite(reference).all()
    for mode, out in outs.items():
        assert torch.equal(torch.isnan(out), torch.isnan(reference)), mode
        assert torch.equal(torch.isfinite(out), torch.isfinite(reference)), mode
        finite = torch.isfinite(reference)
        torch.testing.assert_close(out[finite], reference[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5, "0.3", True])
@pytest.mark.parametrize("mode", ["naive", "parallel", "recurrent"])
def test_scale_must_be_a_finite_positive_number(scale, mode):
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0"):
        call(mode=mode, scale=scale)


def test_rehyat_step_checks_scale_too():
    state = RecurrentState.empty(QKV[1])
    q, k, v = (t[:, :, :6] for t in QKV)
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0"):
        rehyat_step(q, k, v, state, phi_q=MAPS.phi_q, phi_k=MAPS.phi_k, tokens_per_frame=3,
                    chunk_frames=2, overlap_frames=1, scale=float("nan"))


def test_negative_features_are_refused_when_feature_checks_are_on(monkeypatch):
    from rehyat.ops import layout

    def signed(x):
        return MAPS.phi_q(x) - 1.0  # not a valid φ: some features < 0

    call(phi_q=signed)  # unchecked by default (a device sync per call); documented
    monkeypatch.setattr(layout, "CHECK_FEATURE_SIGN", True)
    for mode in ("naive", "parallel", "recurrent"):
        with pytest.raises(ValueError, match=r"phi_q returned negative features"):
            call(phi_q=signed, mode=mode)
    call()  # the built-in φ are positive by construction
