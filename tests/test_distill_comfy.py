"""The ReHyAtDistill node and the ComfyUI capture, in a real ComfyUI with a tiny Wan (real key names).

The CLIP: ComfyUI's loaders (``comfy.sd.load_clip``) build Wan's umT5 from a hard-coded XXL config
(4096 wide, 24 layers, 256k vocabulary ≈ 5.7 B parameters), so no tiny checkpoint can go through
them. The test therefore builds a real ``comfy.sd.CLIP`` from ComfyUI's own Wan text-encoder classes
(``SD1ClipModel`` / ``SDClipModel`` over ``comfy.text_encoders.t5.T5``, ``WanT5Tokenizer`` with its
``SPieceTokenizer``) with a tiny T5 config and a sentencepiece model trained in the test.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from comfy_support import comfy_or_skip, load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from distill_support import tiny_sentencepiece_model
from nodes_support import pack_module, run_node
from thread_support import one_thread

__all__ = ["one_thread"]
pytestmark = requires_comfyui
WIDGETS = dict(
    prompts="",
    negative_prompt="",
    width=64,
    height=64,
    length=21,
    steps=3,
    cfg=5.0,
    sampler_name="euler_ancestral",
    scheduler="simple",
    capture_stride=1,
    seed=0,
    iterations=8,
    learning_rate=1e-2,
    holdout_prompts=1,
    num_blocks=2,
    placement="last",
    chunk_frames=2,
    overlap_frames=1,
    causal=True,
    phi_hidden_dim=32,
    phi_feature_dim=32,
    run_name="rehyat_test_run",
    checkpoint_every=100,
    query_chunk_fraction=1.0,
)


@pytest.fixture(scope="module")
def model():
    comfy_or_skip()
    return load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    return tmp_path


def conditioning(seed: int, length: int = 6):
    return [[torch.randn(1, length, 4096, generator=torch.Generator().manual_seed(seed)), {}]]


def distill(model, **changes):
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        return run_node(
            "ReHyAtDistill",
            model=model,
            **{**WIDGETS, "positive": conditioning(1), "negative": conditioning(9, 4), **changes},
        )


def test_capture_clone_reproduces_the_model_and_captures_its_attention(model):
    comfy = comfy_or_skip()
    capture_module = pack_module("rehyat.integrations.comfyui_capture")
    seen = []

    class Sink:
        def begin_forward(self):
            seen.append("begin")

        def attention(self, captured):
            seen.append(captured)

        def end_forward(self):
            seen.append("end")

    latent = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7])
    context = conditioning(3)[0][0]

    def denoise(patcher):
        patcher.patch_model(device_to=patcher.load_device)
        try:
            return patcher.model.apply_model(
                latent, sigma, c_crossattn=context, transformer_options={"wrappers": patcher.wrappers}
            )
        finally:
            patcher.unpatch_model(device_to=patcher.offload_device)

    reference = denoise(model)
    capture = capture_module.ComfyWanCapture(model, [0, 1], Sink())
    capture.active = True
    captured = denoise(capture.patcher)
    assert torch.equal(captured, reference)
    assert torch.equal(denoise(model), reference)  # the input model is untouched
    assert seen[0] == "begin" and seen[-1] == "end" and [c.block for c in seen[1:-1]] == [0, 1]
    for c in seen[1:-1]:
        assert c.q.shape == (1, 2, 4 * 16, 128) and c.grid.frames == 4
        assert torch.allclose(c.y, F.scaled_dot_product_attention(c.q, c.k, c.v), atol=1e-5)
    with pytest.raises(ValueError, match=r"blocks \[3\] out of range"):
        capture_module.ComfyWanCapture(model, [3], Sink())
    assert comfy.model_patcher is not None


def test_node_distils_resumes_and_extends_a_run(model, output_dir):
    phi, image, report = distill(model, iterations=30, prompts="", holdout_prompts=0)
    weights = pack_module("rehyat.weights")
    assert isinstance(phi, weights.PhiWeights) and phi.blocks == (0, 1)
    assert image.shape[0] == 1 and image.shape[-1] == 3 and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert "rel L2 before" in report and "30 steps" in report
    run = output_dir / "rehyat_runs" / "rehyat_test_run"
    assert (run / "phi.safetensors").is_file() and (run / "report.json").is_file()
    import json

    blocks = json.loads((run / "report.json").read_text())["held_out"]["blocks"]
    for errors in blocks.values():
        assert errors["after"]["relative_l2"] < 0.97 * errors["before"]["relative_l2"]
    _, _, report = distill(model, iterations=33, holdout_prompts=0)  # same run, more steps: resumes
    assert "33 steps" in report
    assert json.loads((run / "report.json").read_text())["steps"] == 33


def test_cancel_checkpoints_and_the_same_run_name_resumes_to_the_uninterrupted_result(
    model, output_dir, monkeypatch
):
    import comfy.model_management as mm

    whole, _, _ = distill(model, run_name="rehyat_test_whole", iterations=7)
    calls = {"n": 0}

    def interrupted():
        calls["n"] += 1
        return calls["n"] == 4  # the cancel button, pressed during step 4

    monkeypatch.setattr(mm, "processing_interrupted", interrupted)
    with pytest.raises(mm.InterruptProcessingException):
        distill(model, run_name="rehyat_test_parts", iterations=7)
    checkpoints = list(
        (output_dir / "rehyat_runs" / "rehyat_test_parts" / "checkpoints").glob("*.safetensors")
    )
    assert [p.name for p in checkpoints] == ["checkpoint-00000004.safetensors"]
    monkeypatch.setattr(mm, "processing_interrupted", lambda: False)
    resumed, _, _ = distill(model, run_name="rehyat_test_parts", iterations=7)
    for key, value in whole.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(positive=None), "prompts: the prompt list is empty"),
        (dict(prompts="a cat"), "clip: connect the umT5 text encoder"),
        (dict(length=5), r"too short .* at least 3 latent frames \(9 video frames\)"),
        (dict(run_name="a/b"), "run_name 'a/b' must be a plain folder name"),
        (dict(run_name=".."), "must not contain '..'"),
    ],
)
def test_node_bad_inputs_get_clear_errors(model, output_dir, changes, message):
    with pytest.raises(ValueError, match=message):
        distill(model, **changes)


def test_node_refuses_a_run_folder_made_for_other_settings(model, output_dir):
    distill(model, iterations=1, run_name="rehyat_test_foreign")
    with pytest.raises(ValueError, match=r"another model or config \(differs in: .*chunk_frames"):
        distill(model, iterations=1, run_name="rehyat_test_foreign", chunk_frames=3)


def tiny_wan_clip():
    """A real ``comfy.sd.CLIP`` built from ComfyUI's Wan umT5 classes with a tiny config (see module doc)."""
    pytest.importorskip("sentencepiece")
    sd1_clip = importlib.import_module("comfy.sd1_clip")
    t5 = importlib.import_module("comfy.text_encoders.t5")
    wan_te = importlib.import_module("comfy.text_encoders.wan")
    comfy_sd = importlib.import_module("comfy.sd")
    base = importlib.import_module("comfy.supported_models_base")
    config = {
        "d_ff": 16,
        "d_kv": 8,
        "d_model": 4096,
        "dense_act_fn": "gelu_pytorch_tanh",
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-6,
        "model_type": "umt5",
        "num_heads": 2,
        "num_layers": 1,
        "relative_attention_num_buckets": 8,
        "vocab_size": 40,
    }

    class TinyUMT5(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):  # noqa: B006
            super().__init__(
                device=device,
                layer=layer,
                layer_idx=layer_idx,
                textmodel_json_config=config,
                dtype=dtype,
                special_tokens={"end": 1, "pad": 0},
                model_class=t5.T5,
                enable_attention_masks=True,
                zero_out_masked=True,
                model_options=model_options,
            )

    class TinyWanTE(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006
            super().__init__(
                device=device, dtype=dtype, model_options=model_options, name="umt5xxl", clip_model=TinyUMT5
            )

    torch.manual_seed(0)
    clip = comfy_sd.CLIP(
        base.ClipTarget(wan_te.WanT5Tokenizer, TinyWanTE),
        tokenizer_data={"spiece_model": tiny_sentencepiece_model()},
    )
    with torch.no_grad():
        for param in clip.cond_stage_model.parameters():  # ComfyUI leaves T5 weights uninitialised
            param.copy_(torch.randn_like(param) * 0.05)
    return clip


def test_node_encodes_a_prompt_list_with_a_real_comfy_clip(model, output_dir):
    clip = tiny_wan_clip()
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red fox"))
    assert cond[0][0].shape[-1] == 4096
    phi, _, report = distill(
        model,
        clip=clip,
        positive=None,
        negative=None,
        iterations=3,
        prompts="a red fox jumps\n\na cat on the beach\nwaves crash on rocks",
        negative_prompt="blurry",
    )
    assert phi.blocks == (0, 1)
    assert "held-out prompts and seeds" in report


def test_euler_ancestral_step_equals_comfyuis_rectified_flow_sampler():
    comfy_or_skip()
    kd = importlib.import_module("comfy.k_diffusion.sampling")
    sampling = pack_module("rehyat.training.sampling")
    sigmas = sampling.flow_sigmas(6, 8.0).float()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 2, 2, generator=gen)
    noises = [torch.randn(1, 4, 3, 2, 2, generator=gen) for _ in range(6)]

    def model(x, sigma, **kwargs):  # any denoiser: x0 estimate from x and sigma
        return 0.7 * x + 0.1 * sigma.view(-1, 1, 1, 1, 1)

    draws = iter(noises)
    theirs = kd.sample_euler_ancestral_RF(
        model, x0.clone(), sigmas, disable=True, noise_sampler=lambda s, s_next: next(draws)
    )
    ours = x0.clone()
    for i in range(6):
        denoised = model(ours, sigmas[i].view(1))
        ours = sampling.euler_ancestral_step(
            ours, denoised, float(sigmas[i]), float(sigmas[i + 1]), noises[i], 1.0
        )
    assert torch.allclose(ours, theirs, atol=1e-5)
