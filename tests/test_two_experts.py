"""Two-expert (Wan2.2 A14B) chunked sampling in real ComfyUI: the ReHyAt Chunked Sampler with a
``low_noise_model`` equals the stock chain of two KSamplerAdvanced nodes split at ``switch_step``,
bit for bit on CPU fp32, in both orders; streaming never needs both experts loaded at once."""

from __future__ import annotations

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from finetune_support import comfy_stock_nodes
from nodes_support import node_class, pack_module
from sampler_support import patch_with_random_phi

pytestmark = requires_comfyui
LATENT = (1, 16, 5, 4, 4)  # 5 latent frames: chunks of Tc=2 → 2, 2, 1
STEPS, CFG, SEED = 4, 3.0, 11


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class Experts:
    """Two tiny Wan models (a "high-noise" and a "low-noise" expert, separately initialised), each
    ReHyAt-patched with its own random φ, and the stock nodes."""

    def __init__(self):
        self.experts = pack_module("nodes.sampling_experts")  # imports ComfyUI in CPU mode (or skips)
        self.cw = pack_module("rehyat.integrations.comfyui_wan")
        self.config = pack_module("rehyat.config")
        self.stock_nodes = comfy_stock_nodes()
        self.high_base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=0))
        self.low_base = load_tiny_wan_comfy(tiny_wan_state_dict(dim=128, ffn_dim=256, seed=1))
        self.high = self.patch(self.high_base, phi_seed=7)
        self.low = self.patch(self.low_base, phi_seed=8)
        self.positive = [[randn((1, 12, WAN_TEXT_DIM), 1), {}]]
        self.negative = [[randn((1, 12, WAN_TEXT_DIM), 2), {}]]

    def patch(self, base, phi_seed: int, tc: int = 2):
        return patch_with_random_phi(base, chunk_frames=tc, phi_seed=phi_seed)

    def stock_chain(self, high, low, switch: int, sampler: str = "euler", latent=None):
        """The stock Wan2.2 graph: KSamplerAdvanced(high, 0 → switch, leftover noise) →
        KSamplerAdvanced(low, switch → end)."""
        ksampler = self.stock_nodes.KSamplerAdvanced()
        latent = {"samples": torch.zeros(LATENT) if latent is None else latent}
        (first,) = ksampler.sample(high, "enable", SEED, STEPS, CFG, sampler, "simple", self.positive,
                                   self.negative, latent, 0, switch, "enable")
        (second,) = ksampler.sample(low, "disable", SEED, STEPS, CFG, sampler, "simple", self.positive,
                                    self.negative, first, switch, 10000, "disable")
        return second["samples"]

    def chunked(self, switch: int, order: str, sampler: str = "euler", latent=None, **kwargs):
        latent = {"samples": torch.zeros(LATENT) if latent is None else latent}
        out, _ = self.experts.run_two_expert_ksampler(
            self.high, self.low, switch, SEED, STEPS, CFG, sampler, "simple", self.positive, self.negative,
            latent, order=order, disable_pbar=True, **kwargs)
        return out


@pytest.fixture(scope="module")
def experts():
    return Experts()


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc"])
@pytest.mark.parametrize("switch", [2, 1, STEPS])
@torch.inference_mode()
def test_both_orders_equal_the_stock_two_ksampler_chain_bit_for_bit(experts, sampler, switch):
    stock = experts.stock_chain(experts.high, experts.low, switch, sampler)
    streaming = experts.chunked(switch, "streaming", sampler)
    sweep = experts.chunked(switch, "sweep", sampler)
    assert torch.equal(streaming["samples"], stock), (streaming["samples"] - stock).abs().max()
    assert torch.equal(sweep["samples"], stock), (sweep["samples"] - stock).abs().max()
    assert streaming["rehyat_stats"]["switch_step"] == switch and streaming["rehyat_stats"]["chunks"] == 3
    assert stock.abs().max() > 0.1
    if switch == 2 and sampler == "euler":  # both experts matter
        assert not torch.equal(experts.stock_chain(experts.high, experts.high, switch, sampler), stock)
        assert not torch.equal(experts.stock_chain(experts.low, experts.low, switch, sampler), stock)


@torch.inference_mode()
def test_auto_switch_is_half_of_steps_and_the_node_exposes_both_inputs(experts):
    resolve = experts.experts.resolve_switch_step
    assert resolve(-1, 20) == 10 and resolve(-1, 1) == 1 and resolve(3, 4) == 3
    stock = experts.stock_chain(experts.high, experts.low, STEPS // 2)
    node = node_class("ReHyAtChunkedSampler")
    inputs = {i.id: i for i in node.define_schema().inputs}
    assert inputs["low_noise_model"].optional and inputs["switch_step"].default == -1
    assert "half of steps" in inputs["switch_step"].tooltip
    assert "KSamplerAdvanced" in inputs["low_noise_model"].tooltip
    out = node.execute(experts.high, SEED, STEPS, CFG, "euler", "simple", experts.positive, experts.negative,
                       {"samples": torch.zeros(LATENT)}, 1.0, "streaming", "cpu", low_noise_model=experts.low)
    assert torch.equal(out.result[0]["samples"], stock)


@torch.inference_mode()
def test_streaming_loads_one_expert_at_a_time(experts, monkeypatch):
    import comfy.model_management

    loads = []
    original = comfy.model_management.load_models_gpu

    def spy(models, *args, **kwargs):
        loads.append({id(m.model) for m in models})
        return original(models, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", spy)
    experts.chunked(2, "streaming")
    high, low = id(experts.high.model), id(experts.low.model)
    assert all(not {high, low} <= ids for ids in loads), loads  # never both in one load request
    order = [("high" if high in ids else "low") for ids in loads if ids & {high, low}]
    assert order == ["high", "low"] * 3  # each chunk: the high-noise expert, then the low-noise one


def test_memory_is_reserved_for_both_experts_stores(experts, monkeypatch):
    """On a GPU (simulated: devices and free memory only; nothing runs) both stores stay resident, so
    whichever expert ComfyUI loads must leave room for the two of them."""
    import comfy.model_management

    gib = 2**30
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda device=None: 8 * gib)
    cuda = torch.device("cuda")
    phase_sigmas = experts.experts._phase_sigmas

    def on_cpu(model, *args):  # the schedule computed on the CPU (no CUDA here)
        return phase_sigmas(experts.high if model is high else experts.low, *args)

    monkeypatch.setattr(experts.experts, "_phase_sigmas", on_cpu)
    high, low = experts.high.clone(), experts.low.clone()
    for model in (high, low):
        model.load_device = cuda
    runs = [experts.experts.ChunkedRun("euler", "streaming", "gpu") for _ in range(2)]
    latent = torch.zeros(LATENT)
    a, b = experts.experts.plan_experts(high, low, runs, latent, steps=STEPS, switch=2, scheduler="simple",
                                        denoise=1.0, state_device="gpu", order="streaming")
    key = "rehyat_chunked"
    sizes = [expert.reserved_bytes for expert in (a, b)]
    assert all(size > 0 for size in sizes)
    for expert in (a, b):
        assert expert.model.model_options["transformer_options"][key]["device_state_bytes"] == sum(sizes)
    # "auto" plans the second store against what the first leaves free
    tight = sizes[0] + 4 * sizes[1] - 4  # the first store fits in a quarter; the second not beside it
    assert 4 * sizes[0] <= tight
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda device=None: tight)
    runs = [experts.experts.ChunkedRun("euler", "streaming", "auto") for _ in range(2)]
    a, b = experts.experts.plan_experts(high, low, runs, latent, steps=STEPS, switch=2, scheduler="simple",
                                        denoise=1.0, state_device="auto", order="streaming")
    assert a.store.device.type == "cuda" and b.store.device.type == "cpu"
    assert b.model.model_options["transformer_options"][key]["device_state_bytes"] == sizes[0]


@torch.inference_mode()
def test_experts_with_their_own_states_and_a_checked_chunk_grid(experts):
    with pytest.raises(ValueError, match=r"switch_step must be in \[1, steps=4\].*got 5"):
        experts.chunked(5, "streaming")
    with pytest.raises(ValueError, match=r"switch_step must be in \[1, steps=4\].*got 0"):
        experts.chunked(0, "sweep")
    run = experts.experts.run_two_expert_ksampler
    latent = {"samples": torch.zeros(LATENT)}
    args = (SEED, STEPS, CFG, "euler", "simple", experts.positive, experts.negative, latent)
    other_grid = experts.patch(experts.low_base, phi_seed=8, tc=1)
    with pytest.raises(ValueError, match=r"model \(Tc=2\) and low_noise_model \(Tc=1\)"):
        run(experts.high, other_grid, 2, *args, disable_pbar=True)
    with pytest.raises(ValueError, match="low_noise_model: .*ReHyAt-patched"):
        run(experts.high, experts.low_base, 2, *args, disable_pbar=True)
    out = experts.chunked(2, "streaming", state_device="cpu")
    per_expert = out["rehyat_stats"]["state_store_mib_per_expert"]
    assert len(per_expert) == 2 and all(v > 0 for v in per_expert)  # each expert kept its own states


@pytest.mark.parametrize("order", ["streaming", "sweep"])
@torch.inference_mode()
def test_streaming_sampler_users_chain_two_sampler_custom_advanced_nodes(experts, order):
    """The README's recipe: SplitSigmas at switch_step, two SamplerCustomAdvanced (the second with
    DisableNoise), each with a ReHyAt Streaming Sampler — equal to the stock chain."""
    import comfy_extras.nodes_custom_sampler as custom

    switch = 2
    sampler = node_class("ReHyAtStreamingSampler").execute(sampler_name="euler", order=order,
                                                           state_device="cpu").result[0]
    (sigmas,) = custom.BasicScheduler.execute(experts.high, "simple", STEPS, 1.0).result
    high_sigmas, low_sigmas = custom.SplitSigmas.execute(sigmas, switch).result
    latent = {"samples": torch.zeros(LATENT)}
    for model, noise, phase_sigmas in (
        (experts.high, custom.RandomNoise.execute(SEED).result[0], high_sigmas),
        (experts.low, custom.DisableNoise.execute().result[0], low_sigmas),
    ):
        guider = custom.CFGGuider.execute(model, experts.positive, experts.negative, CFG).result[0]
        latent = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, phase_sigmas, latent).result[0]
    assert torch.equal(latent["samples"], experts.stock_chain(experts.high, experts.low, switch))


@torch.inference_mode()
def test_a_phi_made_for_one_expert_is_refused_on_the_other(experts):
    weights = pack_module("rehyat.weights")
    fingerprint = pack_module("nodes.patching").model_fingerprint
    info = experts.cw.comfy_patch_info(experts.high)
    phi = weights.PhiWeights(info.config, info.blocks, weights.BaseModelInfo(128, 1, 2),
                             fingerprint(experts.high), weights.collect_phi_tensors(info.hybrid))
    run = node_class("ReHyAtPatchModel").execute
    patched, report = run(model=experts.high_base, phi=phi, num_blocks=2, placement="last", chunk_frames=2,
                          overlap_frames=1, causal=True, forward_mode="parallel").result
    assert "φ loaded" in report
    with pytest.raises(ValueError, match="fingerprint does not match.*each expert needs its own φ"):
        run(model=experts.low_base, phi=phi, num_blocks=2, placement="last", chunk_frames=2, overlap_frames=1,
            causal=True, forward_mode="parallel")


def _lora_file(folder, dim: int = 128, ffn_dim: int = 256, blocks: int = 2, rank: int = 4, seed: int = 21):
    """A few-step-style LoRA in ComfyUI's format on every block linear of the tiny Wan."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q": (dim, dim), "self_attn.k": (dim, dim), "self_attn.v": (dim, dim),
              "self_attn.o": (dim, dim), "cross_attn.q": (dim, dim), "cross_attn.o": (dim, dim),
              "ffn.0": (ffn_dim, dim), "ffn.2": (dim, ffn_dim)}
    tensors = {}
    for block in range(blocks):
        for name, (out_features, in_features) in shapes.items():
            key = f"diffusion_model.blocks.{block}.{name}"
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=gen) * 0.2
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=gen) * 0.2
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "rehyat_test_fewstep_lora.safetensors"))
    return "rehyat_test_fewstep_lora.safetensors"


@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-then-patch", "patch-then-lora"])
@torch.inference_mode()
def test_few_step_lora_before_or_after_the_patch_samples_exactly(experts, tmp_path, lora_first):
    """4 steps at cfg 1 (the distilled-LoRA setting): the Chunked Sampler equals the stock KSampler on
    the LoRA'd ReHyAt model (to fp32 rounding), whether LoraLoaderModelOnly comes before or after
    ReHyAt Patch Model."""
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(tmp_path / "loras"))
    name = _lora_file(tmp_path / "loras")
    lora = experts.stock_nodes.LoraLoaderModelOnly()
    if lora_first:
        model = experts.patch(lora.load_lora_model_only(experts.high_base, name, 1.0)[0], phi_seed=7)
    else:
        model = lora.load_lora_model_only(experts.high, name, 1.0)[0]
    assert any("blocks.0.self_attn.q.weight" in key for key in model.patches)
    sc = pack_module("nodes.sampling_comfy")
    latent = {"samples": torch.zeros(LATENT)}
    (stock,) = experts.stock_nodes.KSampler().sample(model, SEED, 4, 1.0, "euler", "simple", experts.positive,
                                                     experts.negative, latent)
    for order in ("streaming", "sweep"):
        out, _ = sc.run_chunked_ksampler(model, SEED, 4, 1.0, "euler", "simple", experts.positive,
                                         experts.negative, latent, order=order, disable_pbar=True)
        # equal up to fp32 rounding (≤ 3.1e-6 on values of ~5 measured: batch 1 at cfg 1 gives the
        # chunked forward other GEMM shapes than the whole-clip one)
        torch.testing.assert_close(out["samples"], stock["samples"], rtol=1e-5, atol=1e-5, msg=order)
    (without,) = experts.stock_nodes.KSampler().sample(experts.high, SEED, 4, 1.0, "euler", "simple",
                                                       experts.positive, experts.negative, latent)
    assert not torch.equal(without["samples"], stock["samples"])  # the LoRA is live
