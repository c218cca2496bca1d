"""RecurrentState by batch item: split / select / concatenate, and offload with .to()."""

from __future__ import annotations

import pytest
import torch

from rehyat import FeatureMapConfig, FeatureMapPair
from rehyat.ops import RecurrentState, chunk_layout, rehyat_attention, rehyat_step

MAP = FeatureMapConfig(hidden_dim=12, feature_dim=8, init_bias=-1.0)
B, H, P, D, T, TC, TO = 2, 2, 3, 8, 8, 3, 1  # chunks [0,3) [3,6) [6,8)


def inputs(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T * P, D, generator=gen).to(dtype) for _ in range(3))
    maps = FeatureMapPair(H, D, MAP)
    with torch.no_grad():
        for param in maps.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return q, k, v, maps


def step(q, k, v, state, maps, rows):
    return rehyat_step(q[:, :, rows], k[:, :, rows], v[:, :, rows], state, phi_q=maps.phi_q,
                       phi_k=maps.phi_k, tokens_per_frame=P, chunk_frames=TC, overlap_frames=TO)


def assert_states_equal(a: RecurrentState, b: RecurrentState):
    assert a.frames_seen == b.frames_seen
    for name in ("kv", "k_sum", "k_overlap", "v_overlap"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


@torch.no_grad()
def batched_state(frames=6, seed=0):
    q, k, v, maps = inputs(seed)
    _, state = rehyat_attention(q[:, :, :frames * P], k[:, :, :frames * P], v[:, :, :frames * P],
                                phi_q=maps.phi_q, phi_k=maps.phi_k, tokens_per_frame=P, chunk_frames=TC,
                                overlap_frames=TO, output_final_state=True)
    return state


@pytest.mark.parametrize("frames", [1, 6])  # 1 frame: nothing absorbed yet (feature_dim 0)
def test_split_then_concatenate_is_the_identity(frames):
    state = batched_state(frames)
    assert state.has_linear_part == (frames > TO)
    parts = state.split()
    assert len(parts) == B and all(p.batch_size == 1 and p.frames_seen == frames for p in parts)
    assert_states_equal(RecurrentState.concatenate(parts), state)
    assert_states_equal(RecurrentState.concatenate(parts[::-1]), state.select([1, 0]))
    assert_states_equal(state.select([0]), parts[0])
    assert_states_equal(state.select(torch.tensor([-1])), parts[1])


@torch.no_grad()
def test_per_item_states_at_chunk_boundaries_equal_the_batched_run():
    """Batch 2 chunk by chunk: states split and re-joined at every boundary == the batched run, exactly;
    items run one by one from the split states == the batched run to fp32 rounding (GEMM blocking)."""
    q, k, v, maps = inputs(seed=1)
    batched = rejoined = RecurrentState.empty(k)
    per_item = RecurrentState.empty(k).split()
    outs_batched, outs_rejoined, outs_items = [], [], []
    for chunk in chunk_layout(T, TC, TO):
        rows = slice(chunk.frame_start * P, chunk.frame_end * P)
        out, batched = step(q, k, v, batched, maps, rows)
        outs_batched.append(out)
        out, rejoined = step(q, k, v, RecurrentState.concatenate(rejoined.split()), maps, rows)
        outs_rejoined.append(out)
        item_outs, next_items = [], []
        for i, item_state in enumerate(per_item):
            out_i, next_i = step(q[i:i + 1], k[i:i + 1], v[i:i + 1], item_state, maps, rows)
            item_outs.append(out_i)
            next_items.append(next_i)
        per_item = RecurrentState.concatenate(next_items).split()
        outs_items.append(torch.cat(item_outs))
    torch.testing.assert_close(torch.cat(outs_rejoined, 2), torch.cat(outs_batched, 2), rtol=0, atol=0)
    assert_states_equal(rejoined, batched)
    torch.testing.assert_close(torch.cat(outs_items, 2), torch.cat(outs_batched, 2), rtol=0, atol=1e-6)
    final = RecurrentState.concatenate(per_item)
    assert final.frames_seen == batched.frames_seen == T
    for name in ("kv", "k_sum"):
        torch.testing.assert_close(getattr(final, name), getattr(batched, name), rtol=1e-6, atol=1e-6)
    for name in ("k_overlap", "v_overlap"):
        torch.testing.assert_close(getattr(final, name), getattr(batched, name), rtol=0, atol=0)


def test_empty_and_absorbed_states_join_as_zero_sums():
    """A state with nothing absorbed (d'=0) joins one of width d' as exact zeros of that width."""
    state = batched_state(6)
    fresh = RecurrentState.empty(state.k_overlap[:1], feature_dim=0)
    fresh.frames_seen, fresh.k_overlap, fresh.v_overlap = 6, state.k_overlap[:1], state.v_overlap[:1]
    joined = RecurrentState.concatenate([state.split()[0], fresh])
    assert joined.feature_dim == state.feature_dim and joined.batch_size == 2
    assert joined.kv.dtype == joined.k_sum.dtype == torch.float32
    assert float(joined.kv[1].abs().max()) == 0.0 and float(joined.k_sum[1].abs().max()) == 0.0


def test_concatenate_refuses_mismatched_states():
    six, three = batched_state(6).split()[0], batched_state(3).split()[0]
    with pytest.raises(ValueError, match=r"mismatched frames_seen \(states\[0\]: 6, states\[1\]: 3\)"):
        RecurrentState.concatenate([six, three])
    wide = FeatureMapPair(H, D, FeatureMapConfig(hidden_dim=4, feature_dim=6))
    q, k, v, _ = inputs()
    _, other = rehyat_attention(q[:1, :, :6 * P], k[:1, :, :6 * P], v[:1, :, :6 * P], phi_q=wide.phi_q,
                                phi_k=wide.phi_k, tokens_per_frame=P, chunk_frames=TC, overlap_frames=TO,
                                output_final_state=True)
    with pytest.raises(ValueError, match=r"different feature widths d' \[6, 8\]"):
        RecurrentState.concatenate([six, other])
    with pytest.raises(ValueError, match=r"mismatched \(heads, head_dim\)"):
        RecurrentState.concatenate([six, RecurrentState(six.kv[:, :1], six.k_sum[:, :1], six.k_overlap[:, :1],
                                                        six.v_overlap[:, :1], frames_seen=6)])
    with pytest.raises(ValueError, match=r"mismatched overlap K/V dtype"):
        RecurrentState.concatenate([six, six.to(dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match=r"needs at least one RecurrentState"):
        RecurrentState.concatenate([])
    with pytest.raises(IndexError, match=r"batch indices \[2\] out of range for a state of batch 2"):
        batched_state(6).select([0, 2])


@pytest.mark.parametrize("pin_memory", [False, True])
def test_offload_to_cpu_keeps_the_numbers(pin_memory):
    """.to('cpu', non_blocking, pin_memory): pinned only when CUDA exists; S, z stay fp32."""
    state = batched_state(6)
    moved = state.to("cpu", non_blocking=True, pin_memory=pin_memory)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    assert_states_equal(moved, state)
    pinned = pin_memory and torch.cuda.is_available()
    assert all(t.is_pinned() == pinned for t in (moved.kv, moved.k_sum, moved.k_overlap, moved.v_overlap))
    half = state.to("cpu", torch.bfloat16, pin_memory=pin_memory)
    assert half.kv.dtype == torch.float32 and half.k_overlap.dtype == torch.bfloat16
