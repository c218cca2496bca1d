"""The ReHyAt chunked samplers in real ComfyUI: streaming == sweep == the stock KSampler, refusals,
progress, memory sizing, progressive decode (tiny Wan2.1 with real keys, ComfyUI's real Wan VAE)."""

from __future__ import annotations

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import node_class, pack_module
from vae_support import load_tiny_wan_vae

pytestmark = requires_comfyui
LATENT = (1, 16, 5, 4, 4)  # 5 latent frames: chunks of Tc=2 → 2, 2 and a partial last chunk of 1
STEPS, CFG, SEED = 2, 3.0, 5


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class Setup:
    """The pack's modules (imported as ComfyUI imports the pack), a tiny Wan and its ReHyAt clones."""

    def __init__(self):
        self.sc = pack_module("nodes.sampling_comfy")  # imports ComfyUI in CPU mode (or skips)
        import comfy.sample
        import comfy.samplers

        self.sample, self.samplers = comfy.sample, comfy.samplers
        self.cw = pack_module("rehyat.integrations.comfyui_wan")
        self.memory = pack_module("rehyat.integrations.comfyui_memory")
        self.chunks = pack_module("rehyat.integrations.comfyui_chunks")
        self.config = pack_module("rehyat.config")
        self.base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=0))
        self.positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
        self.negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]
        self.patched = self.patch(tc=2, to=1)

    def conversion(self, tc=2, to=1, num_blocks=None, causal=True):
        c = self.config
        return c.ConversionConfig(num_blocks=num_blocks, attention=c.HybridAttentionConfig(
            chunk_frames=tc, overlap_frames=to, causal=causal,
            feature_map=c.FeatureMapConfig(hidden_dim=16, feature_dim=16)))

    def patch(self, tc=2, to=1, num_blocks=None, causal=True, forward_mode="parallel"):
        config = self.conversion(tc, to, num_blocks, causal)
        wan = self.base.get_model_object("diffusion_model")
        hybrid = self.cw.build_hybrid_modules(wan, config, config.resolve_blocks(len(wan.blocks)))
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():  # random, non-trivial φ: the linear part visibly matters
            for module in hybrid.values():
                for param in module.parameters():
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        return self.cw.patch_comfy_wan(self.base, config, hybrid, forward_mode=forward_mode)

    def stock(self, model, sampler, latent=None, seed=SEED, denoise=1.0, negative=None, cfg=CFG):
        latent = torch.zeros(LATENT) if latent is None else latent
        noise = self.sample.prepare_noise(latent, seed)
        return self.sample.sample(model, noise, STEPS, cfg, sampler, "simple", self.positive,
                                  negative or self.negative, latent, denoise=denoise, seed=seed,
                                  disable_pbar=True)

    def chunked(self, model, sampler, order, latent=None, seed=SEED, denoise=1.0, negative=None, cfg=CFG,
                **kwargs):
        latent = torch.zeros(LATENT) if latent is None else latent
        out, images = self.sc.run_chunked_ksampler(
            model, seed, STEPS, cfg, sampler, "simple", self.positive, negative or self.negative,
            {"samples": latent}, denoise, order=order, disable_pbar=True, **kwargs)
        return out, images


@pytest.fixture(scope="module")
def setup():
    return Setup()


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "uni_pc"])
@torch.inference_mode()
def test_streaming_equals_sweep_equals_stock_ksampler(setup, sampler):
    stock = setup.stock(setup.patched, sampler)
    streaming, _ = setup.chunked(setup.patched, sampler, "streaming")
    sweep, _ = setup.chunked(setup.patched, sampler, "sweep")
    close(streaming["samples"], stock)
    close(sweep["samples"], stock)
    assert stock.abs().max() > 0.1
    if sampler == "euler":  # ReHyAt is really active: the softmax model samples something else
        assert (setup.stock(setup.base, sampler) - stock).abs().max() > 1e-2


@torch.inference_mode()
def test_cfg_with_cond_and_uncond_run_apart(setup):
    calls = []
    watched = setup.patched.clone()

    def record(executor, x, *args, **kwargs):
        calls.append(list(args[4]["cond_or_uncond"]))
        return executor(x, *args, **kwargs)

    # apply_model wrapper args: t, c_concat, c_crossattn, control, transformer_options
    watched.add_wrapper_with_key("apply_model", "test-record", record)
    negative = [[randn((1, 7, WAN_TEXT_DIM), 3), {}]]  # 12 vs 7 tokens: ComfyUI cannot batch them
    stock = setup.stock(setup.patched, "euler", negative=negative)
    streaming, _ = setup.chunked(watched, "euler", "streaming", negative=negative)
    assert calls and all(len(c) == 1 for c in calls) and {0, 1} <= {c[0] for c in calls}
    close(streaming["samples"], stock)


@torch.inference_mode()
def test_batch_two_with_denoise_on_a_given_latent(setup):
    latent = randn((2, *LATENT[1:]), 11)
    stock = setup.stock(setup.patched, "dpmpp_2m", latent=latent, denoise=0.6)
    streaming, _ = setup.chunked(setup.patched, "dpmpp_2m", "streaming", latent=latent, denoise=0.6)
    sweep, _ = setup.chunked(setup.patched, "dpmpp_2m", "sweep", latent=latent, denoise=0.6)
    close(streaming["samples"], stock)
    close(sweep["samples"], stock)
    assert (stock[0] - stock[1]).abs().max() > 1e-2  # the items really differ
    assert (stock - latent).abs().max() > 1e-2


@torch.inference_mode()
def test_overlap_longer_than_chunk(setup):
    model = setup.patch(tc=1, to=2)
    stock = setup.stock(model, "euler")
    streaming, _ = setup.chunked(model, "euler", "streaming")
    close(streaming["samples"], stock)
    assert streaming["rehyat_stats"]["chunks"] == LATENT[2]


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
@torch.inference_mode()
def test_noise_injecting_samplers_stream_like_sweep(setup, sampler):
    streaming, _ = setup.chunked(setup.patched, sampler, "streaming")
    sweep, _ = setup.chunked(setup.patched, sampler, "sweep")
    close(streaming["samples"], sweep["samples"])
    other, _ = setup.chunked(setup.patched, sampler, "streaming", seed=SEED + 1)
    assert (other["samples"] - streaming["samples"]).abs().max() > 1e-2


@torch.inference_mode()
def test_offloaded_states_give_the_same_numbers_and_stats(setup):
    cpu, _ = setup.chunked(setup.patched, "heun", "streaming", state_device="cpu")
    close(cpu["samples"], setup.stock(setup.patched, "heun"))
    stats = cpu["rehyat_stats"]
    assert set(stats) == {"seconds", "peak_memory_mib", "device", "order", "chunks", "state_store_mib"}
    assert stats["order"] == "streaming" and stats["chunks"] == 3 and stats["device"] == "cpu"
    assert stats["seconds"] > 0 and stats["peak_memory_mib"] > 0
    # heun, 2 steps ending at sigma 0: 3 evaluations × (cond, uncond) × 2 blocks × (S, z, 1 overlap frame)
    h, d, dp, p = 1, 128, 16, 4
    expected = 3 * 2 * 2 * (4 * h * dp * d + 4 * h * dp + 2 * 1 * p * h * d * 4)
    assert stats["state_store_mib"] * 2**20 == expected
    store = pack_module("rehyat.streaming")
    assert store.state_store_bytes(evaluations=3, conditionings=2, batch=1, blocks=2, heads=1, head_dim=128,
                                   feature_dim=16, overlap_frames=1, tokens_per_frame=4,
                                   overlap_bytes_per_element=4) == expected


def test_refusals_say_what_to_change(setup):
    with pytest.raises(ValueError, match="ReHyAt Patch Model"):
        setup.chunked(setup.base, "euler", "streaming")
    with pytest.raises(ValueError, match=r"blocks \[0\] still use softmax"):
        setup.chunked(setup.patch(num_blocks=1), "euler", "sweep")
    with pytest.raises(ValueError, match="causal"):
        setup.chunked(setup.patch(causal=False), "euler", "streaming")
    for adaptive in ("dpm_adaptive", "dpm_fast"):
        with pytest.raises(ValueError, match="cannot run chunk by chunk"):
            setup.chunked(setup.patched, adaptive, "streaming")
    rescaled = setup.patched.clone()  # what RescaleCFG does: std over the whole latent
    rescaled.set_model_sampler_cfg_function(lambda args: args["cond"])
    with pytest.raises(ValueError, match="CFG function '<lambda>'.*order='sweep'"):
        setup.chunked(rescaled, "euler", "streaming")
    with pytest.raises(ValueError, match="order must be one of"):
        setup.chunked(setup.patched, "euler", "backwards")
    with pytest.raises(ValueError, match="state_device must be one of"):
        setup.chunked(setup.patched, "euler", "streaming", state_device="tpu")


@torch.inference_mode()
def test_unsupported_model_inputs_are_refused_not_dropped(setup):
    extra = randn((1, 16, 1, 4, 4), 4)
    positive = [[setup.positive[0][0], {"time_dim_concat": extra}]]
    for order in ("streaming", "sweep"):
        with pytest.raises(ValueError, match="time_dim_concat"):
            setup.sc.run_chunked_ksampler(setup.patched, SEED, 1, CFG, "euler", "simple", positive,
                                          setup.negative, {"samples": torch.zeros(LATENT)}, order=order,
                                          disable_pbar=True)
    masked = [[setup.positive[0][0], {"mask": torch.ones(1, 4, 4), "set_area_to_bounds": False}]]
    with pytest.raises(ValueError, match="area or mask"):
        setup.sc.run_chunked_ksampler(setup.patched, SEED, 1, CFG, "euler", "simple", masked, setup.negative,
                                      {"samples": torch.zeros(LATENT)}, order="streaming", disable_pbar=True)


@torch.inference_mode()
def test_progress_bar_counts_chunks_times_steps_and_cancel_stops(setup, monkeypatch):
    import comfy.model_management
    import comfy.utils
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod

    monkeypatch.setattr(latent_preview.args, "preview_method", LatentPreviewMethod.Latent2RGB)

    seen = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append(
        (value, total, preview is not None)))
    try:
        setup.chunked(setup.patched, "euler", "streaming")
        values = [v for v, _, _ in seen]  # chunk i/n × step s/S on one bar of n·S
        assert values == sorted(values) and sorted(set(values)) == list(range(1, 3 * STEPS + 1))
        assert {t for _, t, _ in seen} == {3 * STEPS}
        assert [v for v, _, p in seen if p] == [STEPS, 2 * STEPS, 3 * STEPS]  # a preview per finished chunk
        seen.clear()

        def interrupt_after_first_chunk(value, total, preview, node_id=None):
            seen.append(value)
            if value == STEPS:
                comfy.model_management.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(interrupt_after_first_chunk)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            setup.chunked(setup.patched, "euler", "streaming")
        assert max(seen) == STEPS  # nothing of chunk 2 ran
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(previous)


@torch.inference_mode()
def test_memory_is_sized_for_one_chunk_and_counts_phi(setup):
    model = setup.patched
    phi = sum(setup.memory.phi_bytes(m) for m in setup.cw.comfy_patch_info(model).hybrid.values())
    assert phi > 0 and model.model_size() == setup.base.model_size() + phi
    seen = []

    def executor(m, shape, *args, **kwargs):
        seen.append(list(shape))

    wrapper = setup.memory.prepare_sampling_wrapper(setup.cw.comfy_patch_info)
    clip = [1, 16, 40, 4, 4]
    wrapper(executor, model, clip, {}, model_options={"transformer_options": {}})  # parallel, stock sampler
    chunked = {"transformer_options": {setup.memory.CHUNKED_KEY: {"device_state_bytes": 0}}}
    wrapper(executor, model, clip, {}, model_options=chunked)
    per_frame = model.model.memory_required([2, 16, 1, 4, 4])
    chunked["transformer_options"][setup.memory.CHUNKED_KEY]["device_state_bytes"] = int(per_frame * 5)
    wrapper(executor, model, clip, {}, model_options=chunked)
    recurrent = setup.patch(forward_mode="recurrent")
    wrapper(executor, recurrent, clip, {}, model_options={"transformer_options": {}})
    assert [s[2] for s in seen] == [40, 3, 8, 3]  # Tc + To = 3 frames; + 5 frames' worth of state store


@torch.inference_mode()
def test_streaming_sampler_node_under_sample_custom(setup):
    node = node_class("ReHyAtStreamingSampler")
    schema = node.define_schema()
    assert schema.category == "ReHyAt/sampling" and all(i.tooltip for i in schema.inputs)
    sampler = node.execute(sampler_name="dpmpp_2m", order="streaming", state_device="auto").result[0]
    latent = torch.zeros(LATENT)
    noise = setup.sample.prepare_noise(latent, SEED)
    model = setup.patched
    sigmas = setup.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    custom = setup.sample.sample_custom(model, noise, CFG, sampler, sigmas, setup.positive, setup.negative,
                                        latent, seed=SEED)
    close(custom, setup.stock(model, "dpmpp_2m"))
    with pytest.raises(ValueError, match="cannot run chunk by chunk"):
        node.execute(sampler_name="dpm_adaptive", order="streaming", state_device="auto")


@torch.inference_mode()
def test_chunked_node_decodes_chunks_as_they_land(setup, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    node = node_class("ReHyAtChunkedSampler")
    schema = node.define_schema()
    assert [i.id for i in schema.inputs] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                             "positive", "negative", "latent_image", "denoise", "order",
                                             "state_device", "vae", "low_noise_model", "switch_step",
                                             "save_state", "video_prefix", "fps"]
    assert schema.category == "ReHyAt/sampling" and all(i.tooltip for i in schema.inputs)
    vae = load_tiny_wan_vae()
    decoded_chunks = []
    writer_cls = setup.sc.ChunkImageWriter
    monkeypatch.setattr(writer_cls, "_write", lambda self, px, orig=writer_cls._write: (
        decoded_chunks.append(px.shape[1]), orig(self, px)))
    latent, images = node.execute(
        model=setup.patched, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
        positive=setup.positive, negative=setup.negative, latent_image={"samples": torch.zeros(LATENT)},
        denoise=1.0, order="streaming", state_device="auto", vae=vae).result
    whole = vae.decode(latent["samples"])  # (B, T', H, W, 3): one whole-latent decode
    torch.testing.assert_close(images, whole.reshape(-1, *whole.shape[2:]), atol=1e-5, rtol=1e-5)
    assert decoded_chunks == [5, 8, 4]  # 1 + 4·(2−1), 4·2, 4·1 frames, one write per chunk
    pngs = sorted((tmp_path / "ReHyAt").glob("chunk_*.png"))
    assert len(pngs) == images.shape[0] == 17
    _, empty = node.execute(model=setup.patched, seed=SEED, steps=1, cfg=CFG, sampler_name="euler",
                            scheduler="simple", positive=setup.positive, negative=setup.negative,
                            latent_image={"samples": torch.zeros(LATENT)}, denoise=1.0, order="sweep",
                            state_device="auto").result
    assert empty.shape[0] == 0


@torch.inference_mode()
def test_progressive_decode_equals_whole_decode():
    vae = load_tiny_wan_vae()
    latent = randn((1, 16, 5, 4, 4), 9)
    decoder = pack_module("rehyat.streaming").ProgressiveWanDecoder(vae.first_stage_model)
    pieces = [decoder.decode(latent[:, :, f0:f0 + 2]) for f0 in range(0, 5, 2)]
    whole = vae.first_stage_model.decode(latent)
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="Wan2.1 VAE"):
        pack_module("rehyat.streaming").ProgressiveWanDecoder(torch.nn.Linear(1, 1))


@torch.inference_mode()
def test_image_to_video_conditioning_is_sliced_per_chunk(setup):
    import comfy.clip_vision
    from comfy_support import load_tiny_wan_comfy as load
    from sampler_support import CLIP_VISION_DIM, tiny_wan_i2v_state_dict

    i2v = load(tiny_wan_i2v_state_dict())
    config = setup.conversion()
    wan = i2v.get_model_object("diffusion_model")
    model = setup.cw.patch_comfy_wan(i2v, config, setup.cw.build_hybrid_modules(wan, config, (0, 1)))
    vision = comfy.clip_vision.Output()
    vision.penultimate_hidden_states = randn((1, 257, CLIP_VISION_DIM), 12)
    mask = torch.ones(1, 1, LATENT[2], 4, 4)
    mask[:, :, 0] = 0.0  # the first frame is given (the I2V start image)
    extras = {"concat_latent_image": randn(LATENT, 13), "concat_mask": mask, "clip_vision_output": vision}
    positive = [[setup.positive[0][0], extras]]
    negative = [[setup.negative[0][0], extras]]
    latent = torch.zeros(LATENT)
    noise = setup.sample.prepare_noise(latent, SEED)
    stock = setup.sample.sample(model, noise, STEPS, CFG, "euler", "simple", positive, negative, latent,
                                seed=SEED, disable_pbar=True)
    streaming, _ = setup.sc.run_chunked_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive,
                                                 negative, {"samples": latent}, order="streaming",
                                                 disable_pbar=True)
    close(streaming["samples"], stock)
    with pytest.raises(ValueError, match=r"model input\(s\) \['audio_embed'\]"):
        setup.chunks.check_recurrent_inputs(wan, {"audio_embed": noise, "clip_fea": None})
