"""The pure-PyTorch streaming core: state store, chunk-independent noise, drivers, chunked forward."""

from __future__ import annotations

import pytest
import torch

from rehyat.config import FeatureMapConfig, HybridAttentionConfig
from rehyat.hybrid import FrameGrid, HybridAttention, ReHyAtRun
from rehyat.ops import RecurrentState
from rehyat.recurrent_dit import run_chunked_forward
from rehyat.streaming import (
    ChunkProgress,
    FrameNoiseSampler,
    StateKey,
    StateStore,
    StreamContext,
    check_streamable,
    frame_noise,
    resolve_state_device,
    sample_streaming,
    sample_sweep,
    state_store_bytes,
)
from rehyat.streaming.driver import CONTEXT_KEY

P, H, D = 4, 2, 8  # tokens per frame, heads, head width


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_frame_noise_does_not_depend_on_chunking():
    whole = frame_noise(3, 1, (2, 4, 7, 3, 3), 0)
    parts = torch.cat([frame_noise(3, 1, (2, 4, 3, 3, 3), 0), frame_noise(3, 1, (2, 4, 4, 3, 3), 3)], dim=2)
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, frame_noise(4, 1, (2, 4, 7, 3, 3), 0))  # another seed
    assert not torch.equal(whole, frame_noise(3, 2, (2, 4, 7, 3, 3), 0))  # another draw
    sampler = FrameNoiseSampler(3, torch.zeros(2, 4, 4, 3, 3, dtype=torch.float64), frame_offset=3)
    first, second = sampler(), sampler()
    assert first.dtype == torch.float64 and torch.equal(
        first.float(), frame_noise(3, 0, (2, 4, 7, 3, 3), 0)[:, :, 3:]
    )
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="video latent shape"):
        frame_noise(0, 0, (1, 4, 3, 3), 0)


def test_conditioning_identities_survive_batching_together_or_apart():
    together, apart = StreamContext("streaming"), StreamContext("streaming")
    together.begin_evaluation(2)
    apart.begin_evaluation(2)
    keys = together.keys_for_call([1, 0], 2)
    split = apart.keys_for_call([0], 2) + apart.keys_for_call([1], 2)
    assert sorted(keys) == sorted(split)
    assert keys[0] == StateKey(2, (1, 0), 0) and keys[3] == StateKey(2, (0, 0), 1)
    assert together.keys_for_call([0], 1) == [StateKey(2, (0, 1), 0)]  # a second cond in the same evaluation


def state(batch, frames_seen, seed, feature_dim=3):
    g = torch.Generator().manual_seed(seed)
    return RecurrentState(
        kv=torch.randn(batch, H, feature_dim, D, generator=g),
        k_sum=torch.rand(batch, H, feature_dim, generator=g),
        k_overlap=torch.randn(batch, H, P, D, generator=g),
        v_overlap=torch.randn(batch, H, P, D, generator=g),
        frames_seen=frames_seen,
    )


def test_state_store_round_trip_by_item_and_guards():
    store = StateStore("cpu")
    keys = [StateKey(0, (0, 0), 0), StateKey(0, (0, 0), 1), StateKey(0, (1, 0), 0)]
    saved = {0: state(3, 4, 1), 1: state(3, 4, 2)}
    store.save(keys, saved)
    assert store.nbytes() == sum(s.nbytes() for s in saved.values()) and store.peak_bytes == store.nbytes()
    back = store.load([keys[2], keys[0]], frame_offset=4, device=torch.device("cpu"))  # reordered
    assert torch.equal(back[1].kv, saved[1].kv[[2, 0]]) and torch.equal(
        back[0].v_overlap, saved[0].v_overlap[[2, 0]]
    )
    before = saved[0].kv[:1].clone()
    saved[0].kv.add_(1.0)  # the store holds copies, not views of the caller's tensors
    assert torch.equal(store.load([keys[0]], frame_offset=4, device=torch.device("cpu"))[0].kv, before)
    assert store.load(keys, frame_offset=0, device=torch.device("cpu")) == {}
    with pytest.raises(ValueError, match="saw 4 frames but the chunk starts at frame 6"):
        store.load(keys, frame_offset=6, device=torch.device("cpu"))
    with pytest.raises(KeyError, match="no recurrent state"):
        store.load([StateKey(1, (0, 0), 0)], frame_offset=4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="state batch 3 != 2 keys"):
        store.save(keys[:2], saved)
    store.clear()
    assert len(store) == 0 and store.nbytes() == 0


def test_state_store_size_formula_and_device_choice():
    # Wan2.1-1.3B at 480×832, To=1, d'=256, 30 blocks, 50 steps, CFG, bf16 overlap (design note)
    size = state_store_bytes(
        evaluations=50,
        conditionings=2,
        batch=1,
        blocks=30,
        heads=12,
        head_dim=128,
        feature_dim=256,
        overlap_frames=1,
        tokens_per_frame=1560,
        overlap_bytes_per_element=2,
    )
    per_state = 4 * 12 * 256 * 128 + 4 * 12 * 256 + 2 * 1560 * 1536 * 2
    assert size == 50 * 2 * 30 * per_state and 31 < size / 2**30 < 32  # ≈ 31 GiB
    cuda = torch.device("cuda")
    assert resolve_state_device("gpu", cuda) == cuda
    assert resolve_state_device("cpu", cuda) == torch.device("cpu")
    assert resolve_state_device("auto", cuda, store_bytes=10, free_bytes=100) == cuda
    assert resolve_state_device("auto", cuda, store_bytes=30, free_bytes=100) == torch.device("cpu")
    assert resolve_state_device("auto", torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="state_device must be one of"):
        resolve_state_device("disk", cuda)


def test_adaptive_samplers_are_refused_for_streaming():
    for name in ("dpm_adaptive", "dpm_fast"):
        with pytest.raises(ValueError, match="order='sweep'"):
            check_streamable(name)
    check_streamable("euler")


class FrameLocalModel:
    """A causal per-frame "denoiser" with a recurrent state in the store: out_f = x_f·0.5 + (sum of
    earlier frames' means)·0.1 — what the streaming driver must reproduce chunk by chunk."""

    def __init__(self):
        self.latent_image = None
        self.noise = None

    def __call__(self, x, sigma, model_options=None, **kwargs):
        ctx = model_options["transformer_options"][CONTEXT_KEY]
        frames = x.shape[2]
        means = x.mean(dim=(1, 3, 4))  # (B, T)
        if ctx.order == "streaming":
            keys = ctx.keys_for_call([0], x.shape[0])
            loaded = ctx.store.load(keys, frame_offset=ctx.frame_offset, device=x.device)
            carry = loaded[0].k_sum[:, 0, 0] if loaded else torch.zeros(x.shape[0])
        else:
            carry = torch.zeros(x.shape[0])
        prefix = torch.cumsum(means, dim=1) - means + carry[:, None]  # (B, T): earlier frames only
        if ctx.order == "streaming" and ctx.save_states:
            total = (carry + means.sum(dim=1))[:, None, None].expand(-1, 1, 1).contiguous()
            empty = torch.zeros(x.shape[0], 1, 0, 1)
            ctx.store.save(
                keys,
                {
                    0: RecurrentState(
                        kv=torch.zeros(x.shape[0], 1, 1, 1),
                        k_sum=total[:, :, :1],
                        k_overlap=empty,
                        v_overlap=empty,
                        frames_seen=ctx.frame_offset + frames,
                    )
                },
            )
        return x * 0.5 + 0.1 * prefix[:, None, :, None, None]


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """A k-diffusion-style ancestral-ish sampler (deterministic steps plus injected noise)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(x.shape[0]), **extra_args)
        if callback is not None:
            callback({"i": i, "denoised": denoised, "x": x})
        x = denoised + (sigmas[i + 1] * 0.1) * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


def test_streaming_and_sweep_agree_and_report_progress():
    x = randn((2, 3, 7, 2, 2), 0)
    sigmas = torch.tensor([1.0, 0.6, 0.2, 0.0])
    reports: list[ChunkProgress] = []
    store = StateStore("cpu")
    streamed = sample_streaming(
        euler,
        FrameLocalModel(),
        x,
        sigmas,
        extra_args={"seed": 4},
        chunk_frames=3,
        store=store,
        progress=reports.append,
    )
    swept = sample_sweep(euler, FrameLocalModel(), x, sigmas, extra_args={"seed": 4}, chunk_frames=3)
    torch.testing.assert_close(streamed, swept)
    assert [(r.chunk, r.step, r.finished) for r in reports if r.finished] == [
        (1, 3, True),
        (2, 3, True),
        (3, 3, True),
    ]
    assert [(r.chunk, r.step) for r in reports if not r.finished] == [
        (c, s) for c in (1, 2, 3) for s in (1, 2, 3)
    ]
    assert store.keys() == [StateKey(k, (0, 0), b) for k in range(3) for b in range(2)]
    other = sample_sweep(euler, FrameLocalModel(), x, sigmas, extra_args={"seed": 5}, chunk_frames=3)
    assert (other - swept).abs().max() > 1e-3


def test_streaming_refuses_x_dependent_sigmas_and_honours_cancel():
    def shrinking(model, x, sigmas, extra_args=None, callback=None, disable=None):
        sigma = sigmas[0] * (1.0 + x.abs().mean())  # x-dependent: differs from chunk to chunk
        return model(x, sigma * torch.ones(x.shape[0]), **extra_args)

    x = randn((1, 3, 4, 2, 2), 1)
    with pytest.raises(ValueError, match="chunk 1: model evaluation 0 ran at sigma"):
        sample_streaming(
            shrinking,
            FrameLocalModel(),
            x,
            torch.tensor([1.0, 0.0]),
            extra_args={},
            chunk_frames=2,
            store=StateStore(),
        )

    class Cancelled(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample_streaming(
            euler,
            FrameLocalModel(),
            x,
            torch.tensor([1.0, 0.5, 0.0]),
            extra_args={},
            chunk_frames=2,
            store=StateStore(),
            check_interrupt=interrupt,
        )
    assert len(calls) == 3  # stopped before the first evaluation of chunk 2


def test_chunked_forward_continues_from_states_at_an_absolute_offset():
    config = HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(8, 8))
    layer = HybridAttention(H, D, config, 0)
    q, k, v = (randn((1, H, 6 * P, D), s) for s in (1, 2, 3))

    class OneLayer:  # embed → attention → identity head; frames are absolute
        def __init__(self, offset):
            self.offset, self.seen = offset, []

        def embed(self, f0, f1):
            self.seen.append((f0, f1))
            return slice((f0 - self.offset) * P, (f1 - self.offset) * P)

        def run_block(self, index, rows, f0, f1, run):
            return layer(q[:, :, rows], k[:, :, rows], v[:, :, rows], run)

        def finish_chunk(self, tokens, f0, f1):
            return tokens

    with torch.no_grad():
        whole = layer(q, k, v, ReHyAtRun(FrameGrid(6, 2, 2)))
        first, states = OneLayer(0), {}
        head = run_chunked_forward(
            first, grid=FrameGrid(4, 2, 2), num_blocks=1, chunk_frames=2, states_out=states
        )
        later = OneLayer(4)
        q, k, v = q[:, :, 4 * P :], k[:, :, 4 * P :], v[:, :, 4 * P :]
        tail = run_chunked_forward(
            later, grid=FrameGrid(2, 2, 2), num_blocks=1, chunk_frames=2, frame_offset=4, states=states
        )
    torch.testing.assert_close(torch.cat(head + tail, dim=2), whole, atol=1e-5, rtol=1e-5)
    assert later.seen == [(4, 6)] and first.seen == [(0, 2), (2, 4)]
    with pytest.raises(ValueError, match="frame_offset=3 is not a non-negative multiple of chunk_frames=2"):
        run_chunked_forward(
            later, grid=FrameGrid(2, 2, 2), num_blocks=1, chunk_frames=2, frame_offset=3, states=states
        )
    with pytest.raises(ValueError, match="needs the states of the frames before it"):
        run_chunked_forward(later, grid=FrameGrid(2, 2, 2), num_blocks=1, chunk_frames=2, frame_offset=2)
    with pytest.raises(ValueError, match="its state saw 4 frames but this forward starts at frame_offset=2"):
        run_chunked_forward(
            later, grid=FrameGrid(2, 2, 2), num_blocks=1, chunk_frames=2, frame_offset=2, states=states
        )


def test_phi_on_another_device_is_an_error_not_a_silent_move():
    config = HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(8, 8))
    layer = HybridAttention(H, D, config, 0).to("meta")
    q = randn((1, H, 2 * P, D), 0)
    with pytest.raises(RuntimeError, match="φ is on meta but the activations are on cpu"):
        layer(q, q, q, ReHyAtRun(FrameGrid(2, 2, 2)))
    assert layer.feature_maps.phi_q.weight1.device.type == "meta"


@pytest.mark.parametrize("chunk_frames", [0, -1, 1.5, True, None])
@pytest.mark.parametrize("order", ["streaming", "sweep"])
def test_bad_chunk_frames_are_refused_at_the_engine_entry(order, chunk_frames):
    x = randn((1, 3, 4, 2, 2), 2)
    kwargs = {"extra_args": {}, "chunk_frames": chunk_frames}
    if order == "streaming":
        run, kwargs["store"] = sample_streaming, StateStore()
    else:
        run = sample_sweep
    with pytest.raises(ValueError, match=rf"chunk_frames must be an integer ≥ 1; got {chunk_frames!r}"):
        run(euler, FrameLocalModel(), x, torch.tensor([1.0, 0.0]), **kwargs)


@pytest.mark.parametrize("order", ["streaming", "sweep"])
def test_a_schedule_without_steps_is_refused(order):
    x = randn((1, 3, 4, 2, 2), 2)
    kwargs = {"extra_args": {}, "chunk_frames": 2}
    run = sample_streaming if order == "streaming" else sample_sweep
    if order == "streaming":
        kwargs["store"] = StateStore()
    for sigmas in (torch.tensor([1.0]), torch.ones(2, 2), torch.tensor([1.0, float("nan")])):
        with pytest.raises(ValueError, match="sigmas"):
            run(euler, FrameLocalModel(), x, sigmas, **kwargs)


def test_one_store_plan_serves_the_memory_estimate_and_the_store():
    from rehyat.streaming.store import plan_state_store

    cuda, mib = torch.device("cuda"), 2**20  # no GPU needed: nothing is allocated
    auto_fits = plan_state_store("auto", cuda, store_bytes=10 * mib, free_bytes=100 * mib)
    assert auto_fits.device == cuda and auto_fits.reserved_bytes == 10 * mib  # auto chose the GPU: reserve
    auto_big = plan_state_store("auto", cuda, store_bytes=30 * mib, free_bytes=100 * mib)
    assert auto_big.device.type == "cpu" and auto_big.reserved_bytes == 0
    gpu = plan_state_store("gpu", cuda, store_bytes=30 * mib, free_bytes=100 * mib)
    assert gpu.device == cuda and gpu.reserved_bytes == 30 * mib
    assert plan_state_store("cpu", cuda, store_bytes=mib).reserved_bytes == 0
    on_cpu = plan_state_store("gpu", torch.device("cpu"), store_bytes=mib)
    assert on_cpu.device.type == "cpu" and on_cpu.reserved_bytes == 0
