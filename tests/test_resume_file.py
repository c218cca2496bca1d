"""The pure parts of extendable clips: per-frame starting noise, the resume file, a stream that starts
at a later chunk (no ComfyUI needed)."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from rehyat.ops import RecurrentState
from rehyat.streaming import (
    ChunkStream,
    ResumeSettings,
    StateKey,
    StateStore,
    check_extendable,
    initial_frame_noise,
    load_resume,
    resume_file_bytes,
    save_resume,
)
from rehyat.streaming.resume import tensor_sha256, tensors_sha256


def test_initial_noise_of_a_frame_does_not_depend_on_the_clip_length():
    long = initial_frame_noise(5, (2, 4, 7, 3, 3))
    short = initial_frame_noise(5, (2, 4, 3, 3, 3))
    tail = initial_frame_noise(5, (2, 4, 4, 3, 3), 3)
    assert torch.equal(long[:, :, :3], short) and torch.equal(long[:, :, 3:], tail)
    assert not torch.equal(initial_frame_noise(6, (2, 4, 3, 3, 3)), short)
    assert abs(float(long.std()) - 1.0) < 0.15


def _state(frames: int, seed: int) -> RecurrentState:
    gen = torch.Generator().manual_seed(seed)
    return RecurrentState(kv=torch.randn(1, 2, 4, 8, generator=gen), k_sum=torch.rand(1, 2, 4, generator=gen),
                          k_overlap=torch.randn(1, 2, 6, 8, generator=gen),
                          v_overlap=torch.randn(1, 2, 6, 8, generator=gen), frames_seen=frames)


def _settings(frames: int = 6) -> ResumeSettings:
    samples = torch.zeros(1, 16, frames, 2, 2)
    return ResumeSettings(
        sampler_name="euler", scheduler="simple", steps=2, cfg=3.0, denoise=1.0, seed=1,
        sigmas=[1.0, 0.5, 0.0],
        evaluation_sigmas=[1.0, 0.5], chunk_frames=3, overlap_frames=1, frames=frames,
        latent_shape=list(samples.shape), latent_sha256=tensor_sha256(samples), fingerprint=[0.1, 0.2],
        phi_sha256=tensors_sha256({"a": torch.ones(2)}))


def test_resume_file_round_trip_and_refusals(tmp_path):
    store = StateStore("cpu")
    keys = [StateKey(e, (c, 0), 0) for e in range(2) for c in range(2)]
    for i, key in enumerate(keys):
        store.put(key, {0: _state(6, i), 1: _state(6, 10 + i)})
    path = save_resume(tmp_path / "clip.safetensors", store, _settings())
    assert path.stat().st_size <= resume_file_bytes(store.nbytes())
    loaded, settings = load_resume(path)
    assert settings == _settings()
    assert [k for k, _ in loaded.items()] == sorted(keys)
    for (key, blocks), (key2, blocks2) in zip(store.items(), loaded.items(), strict=True):
        assert key == key2
        for block in blocks:
            for part in ("kv", "k_sum", "k_overlap", "v_overlap"):
                assert torch.equal(getattr(blocks[block], part), getattr(blocks2[block], part))
            assert blocks2[block].frames_seen == 6
    with pytest.raises(FileExistsError):
        save_resume(path, store, _settings())  # never overwrites
    with pytest.raises(ValueError, match="saw 6 frames"):
        save_resume(tmp_path / "wrong.safetensors", store, _settings(frames=9))
    with pytest.raises(ValueError, match="empty"):
        save_resume(tmp_path / "empty.safetensors", StateStore(), _settings())
    tensors = safetensors.torch.load_file(path)
    tensors["state.0.0.0.0.0.kv"][0, 0, 0, 0] = float("inf")
    bad = tmp_path / "bad.safetensors"
    header = {"rehyat_resume": json.dumps({"format": "rehyat_resume", "version": 1,
                                           "settings": json.loads(json.dumps(_settings().__dict__))})}
    safetensors.torch.save_file(tensors, bad, metadata=header)
    with pytest.raises(ValueError, match="non-finite"):
        load_resume(bad)
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not a ReHyAt resume file"):
        load_resume(foreign)
    newer = tmp_path / "newer.safetensors"
    safetensors.torch.save_file({}, newer, metadata={"rehyat_resume": json.dumps({"version": 99})})
    with pytest.raises(ValueError, match="update the pack"):
        load_resume(newer)


def test_extendable_needs_whole_chunks():
    check_extendable(6, 3)
    with pytest.raises(ValueError, match="use 6 or 9 latent frames \\(21 or 33 video frames\\)"):
        check_extendable(7, 3)


def test_a_stream_can_start_at_a_later_chunk_with_known_sigmas():
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for sigma in sigmas[:-1]:
            x = model(x, sigma.reshape(1))
        return x

    model = lambda x, sigma: x * 0.5  # noqa: E731
    stream = ChunkStream(sampler, frames=6, chunk_frames=3, store=StateStore(), keep_final_states=True)
    stream.run(0, model, torch.ones(1, 1, 3, 1, 1), torch.tensor([1.0, 0.5, 0.0]), {})
    assert stream.evaluation_sigmas == [1.0, 0.5]
    later = ChunkStream(sampler, frames=9, chunk_frames=3, store=StateStore(), first_chunk=2,
                        evaluation_sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="the next one is 2"):
        later.run(1, model, torch.ones(1, 1, 3, 1, 1), torch.tensor([1.0, 0.5, 0.0]), {})
    with pytest.raises(ValueError, match="ran at sigma 0.9"):
        later.run(2, model, torch.ones(1, 1, 3, 1, 1), torch.tensor([0.9, 0.5, 0.0]), {})
    with pytest.raises(ValueError, match="evaluation_sigmas"):
        ChunkStream(sampler, frames=9, chunk_frames=3, store=StateStore(), first_chunk=1)
