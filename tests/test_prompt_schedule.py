"""A prompt per chunk (ReHyAt Prompt Schedule) in real ComfyUI on a tiny Wan2.1: the chunks before a
change equal the unscheduled run bit for bit, both orders agree, one entry is the plain conditioning,
CFG with a scheduled negative works, extending with a new prompt equals scheduling it, and samplers
that cannot change the prompt between chunks refuse it."""

from __future__ import annotations

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import node_class, pack_module
from sampler_support import patch_with_random_phi

TC, STEPS, CFG, SEED = 2, 2, 3.0, 9


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_schedule_picks_the_entry_whose_start_a_chunk_reached():
    ps = pack_module("rehyat.streaming.prompt_schedule")
    a, b, c = (randn((1, 4, 8), s) for s in (1, 2, 3))
    schedule = ps.PromptSchedule((0, 9, 21), (a, b, c))
    # Tc = 3: chunks start at latent 0, 3, 6, 9 = video frames 0, 9, 21, 33
    assert ps.chunk_boundaries(3, 4) == [0, 9, 21, 33]
    assert [schedule.entry_for(latent) for latent in (0, 3, 6, 9)] == [0, 1, 2, 2]
    assert ps.PromptSchedule((0, 10), (a, b)).entry_for(3) == 0  # frame 10 is reached by the chunk at 21
    context = torch.cat([a, randn((1, 4, 8), 4)])  # (2, 4, 8): cond block, uncond block
    same, picks = ps.scheduled_context(context, [schedule, None], 0)
    assert same is context and picks == (0, -1)
    swapped, picks = ps.scheduled_context(context, [schedule, None], 6)
    assert picks == (2, -1) and torch.equal(swapped[0], c[0]) and torch.equal(swapped[1], context[1])
    long_context = torch.cat([a, a], dim=1)  # ComfyUI repeats shorter prompts to a common length
    tiled, _ = ps.scheduled_context(long_context, [schedule], 3)
    assert torch.equal(tiled, torch.cat([b, b], dim=1))
    with pytest.raises(ValueError, match="start frames must increase"):
        ps.PromptSchedule((0, 9, 9), (a, b, c))
    with pytest.raises(ValueError, match="starts at frame 0"):
        ps.PromptSchedule((4,), (a,))
    with pytest.raises(ValueError, match="text width"):
        ps.PromptSchedule((0, 9), (a, randn((1, 4, 6), 5)))
    with pytest.raises(ValueError, match="do not tile"):
        ps.scheduled_context(torch.zeros(1, 5, 8), [schedule], 3)


class Setup:
    def __init__(self):
        self.sc = pack_module("nodes.sampling_comfy")  # imports ComfyUI in CPU mode (or skips)
        self.ext = pack_module("nodes.sampling_extend")
        import comfy.sample

        self.sample = comfy.sample
        self.base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=0))
        self.a = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
        self.b = [[randn((1, 12, WAN_TEXT_DIM), 3), {}]]
        self.negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
        self.other_negative = [[randn((1, 12, WAN_TEXT_DIM), 4), {}]]
        self.model = self.patch()
        self.node = node_class("ReHyAtPromptSchedule")

    def patch(self, forward_mode="parallel"):
        return patch_with_random_phi(self.base, chunk_frames=TC, forward_mode=forward_mode)

    def schedule(self, *entries):
        kwargs = {"conditioning_1": entries[0]}
        for k, (start, cond) in enumerate(entries[1:], start=2):
            kwargs[f"conditioning_{k}"], kwargs[f"start_frame_{k}"] = cond, start
        return self.node.execute(**kwargs).result[0]

    def run(self, positive, frames=6, order="streaming", negative=None, **kwargs):
        out, _ = self.sc.run_chunked_ksampler(
            self.model, SEED, STEPS, CFG, "euler", "simple", positive, negative or self.negative,
            {"samples": torch.zeros((1, 16, frames, 4, 4))}, 1.0, order=order, disable_pbar=True, **kwargs)
        return out["samples"]


@pytest.fixture(scope="module")
def setup():
    return Setup()


@requires_comfyui
@torch.inference_mode()
def test_chunks_before_the_change_are_the_unscheduled_run(setup):
    scheduled = setup.schedule(setup.a, (5, setup.b))  # Tc = 2: chunk 1 starts at video frame 5
    only_a = setup.run(setup.a)
    streaming = setup.run(scheduled)
    assert torch.equal(streaming[:, :, :2], only_a[:, :, :2])  # chunk 0: prompt a, bit for bit
    assert not torch.equal(streaming[:, :, 2:], only_a[:, :, 2:])  # chunks 1, 2: prompt b
    sweep = setup.run(scheduled, order="sweep")
    torch.testing.assert_close(sweep, streaming, atol=1e-5, rtol=1e-5)
    # a change takes effect at the first boundary at or after its start: 6 … 9 act like 9
    assert torch.equal(setup.run(setup.schedule(setup.a, (6, setup.b))),
                       setup.run(setup.schedule(setup.a, (9, setup.b))))
    # a start beyond the clip changes nothing; one entry is the plain conditioning itself
    assert torch.equal(setup.run(setup.schedule(setup.a, (1000, setup.b))), only_a)
    assert setup.schedule(setup.a) is setup.a


@requires_comfyui
@torch.inference_mode()
def test_cfg_with_a_scheduled_negative(setup):
    positive = setup.schedule(setup.a, (5, setup.b))
    negative = setup.schedule(setup.negative, (9, setup.other_negative))
    streaming = setup.run(positive, negative=negative)
    sweep = setup.run(positive, negative=negative, order="sweep")
    torch.testing.assert_close(sweep, streaming, atol=1e-5, rtol=1e-5)
    plain_negative = setup.run(positive)
    assert torch.equal(streaming[:, :, :4], plain_negative[:, :, :4])  # the negative changes at chunk 2
    assert not torch.equal(streaming[:, :, 4:], plain_negative[:, :, 4:])


@requires_comfyui
@torch.inference_mode()
def test_extending_with_a_new_prompt_equals_scheduling_it(setup, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    scheduled = setup.schedule(setup.a, (9, setup.b))  # chunk 2 (latent 4) starts at video frame 13
    one_run = setup.run(scheduled, frames=8, save_state=True)
    out, _ = setup.sc.run_chunked_ksampler(
        setup.model, SEED, STEPS, CFG, "euler", "simple", setup.a, setup.negative,
        {"samples": torch.zeros((1, 16, 4, 4, 4))}, 1.0, disable_pbar=True, save_state=True)
    extended, _ = setup.ext.run_extend_clip(setup.model, setup.b, setup.negative, out, 4, disable_pbar=True)
    assert torch.equal(extended["samples"], one_run)
    again, _ = setup.ext.run_extend_clip(setup.model, scheduled, setup.negative, out, 4, disable_pbar=True)
    assert torch.equal(again["samples"], one_run)  # start frames count from the clip's first frame


@requires_comfyui
@torch.inference_mode()
def test_samplers_that_cannot_change_the_prompt_refuse_it(setup):
    scheduled = setup.schedule(setup.a, (5, setup.b))
    latent = torch.zeros((1, 16, 6, 4, 4))
    noise = setup.sample.prepare_noise(latent, SEED)
    with pytest.raises(ValueError, match="Prompt Schedule needs chunked sampling"):
        setup.sample.sample(setup.model, noise, STEPS, CFG, "euler", "simple", scheduled, setup.negative,
                            latent, seed=SEED, disable_pbar=True)
    # forward_mode=recurrent computes every model call chunk by chunk: the stock KSampler then applies it
    recurrent = setup.patch(forward_mode="recurrent")
    stock = setup.sample.sample(recurrent, noise, STEPS, CFG, "euler", "simple", scheduled, setup.negative,
                                latent, seed=SEED, disable_pbar=True)
    plain = setup.sample.sample(recurrent, noise, STEPS, CFG, "euler", "simple", setup.a, setup.negative,
                                latent, seed=SEED, disable_pbar=True)
    assert torch.equal(stock[:, :, :2], plain[:, :, :2]) and not torch.equal(stock[:, :, 2:], plain[:, :, 2:])


@requires_comfyui
def test_node_inputs_and_refusals(setup):
    schema = setup.node.define_schema()
    pairs = [f"{kind}_{k}" for k in (2, 3, 4) for kind in ("conditioning", "start_frame")]
    expected = ["conditioning_1", "start_frame_1", *pairs]
    assert [i.id for i in schema.inputs] == expected
    assert schema.category == "ReHyAt/sampling" and all(i.tooltip for i in schema.inputs)
    assert "chunk boundary" in schema.inputs[3].tooltip
    one = setup.node.execute(conditioning_1=setup.a, start_frame_1=0).result[0]
    assert one is setup.a  # start_frame_1 = 0 is the plain conditioning
    with pytest.raises(ValueError, match="start_frame_1 must be 0"):
        setup.node.execute(conditioning_1=setup.a, start_frame_1=9, conditioning_2=setup.b, start_frame_2=21)
    with pytest.raises(ValueError, match="start_frame_3 must be after"):
        setup.node.execute(conditioning_1=setup.a, conditioning_2=setup.b, start_frame_2=20,
                           conditioning_3=setup.b, start_frame_3=10)
    with pytest.raises(ValueError, match="holds 2 entries"):
        setup.node.execute(conditioning_1=setup.a, conditioning_2=setup.b + setup.b, start_frame_2=5)
    image = [[setup.b[0][0], {"concat_latent_image": torch.zeros(1, 16, 6, 4, 4)}]]
    with pytest.raises(ValueError, match="only the text may change"):
        setup.node.execute(conditioning_1=setup.a, conditioning_2=image, start_frame_2=5)
    nested = setup.schedule(setup.a, (5, setup.b))
    with pytest.raises(ValueError, match="already a prompt schedule"):
        setup.node.execute(conditioning_1=nested, conditioning_2=setup.b, start_frame_2=9)
