"""The shipped teacher runs through the pack's adapters: real ComfyUI's loader + patch_comfy_wan, and
diffusers' WanTransformer3DModel + patch_diffusers_wan — with ReHyAt φ, the same numbers as the
pure-PyTorch WanDiT conversion."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_support import comfy_or_skip, load_tiny_wan_comfy

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.keymap import wan_state_dict_to_diffusers
from rehyat.models.wan_rehyat import convert, converted_blocks, forward_recurrent, phi_parameters
from rehyat.teacher.model import ASSETS, load_teacher, teacher_files_present

pytestmark = pytest.mark.skipif(
    not teacher_files_present(ASSETS),
    reason="rehyat/assets has no teacher (python -m rehyat train-teacher --export rehyat/assets)",
)
CONVERSION = ConversionConfig(
    attention=HybridAttentionConfig(
        chunk_frames=2, overlap_frames=1, feature_map=FeatureMapConfig(hidden_dim=32, feature_dim=32)
    )
)
SIGMA = 0.7


@pytest.fixture(scope="module")
def teacher_and_student():
    teacher = load_teacher()
    student = copy.deepcopy(teacher.dit)
    torch.manual_seed(0)
    convert(student, CONVERSION)
    with torch.no_grad():
        for p in phi_parameters(student):
            p.add_(torch.randn_like(p) * 0.2)
    return teacher, student


@pytest.fixture(scope="module")
def inputs(teacher_and_student):
    teacher, _ = teacher_and_student
    x = teacher.initial_noise(5, seed=1)  # (1, 12, 5, 16, 16)
    with torch.no_grad():
        context = teacher.encode(["a red circle and a blue square collide"])
    return x, context


def test_teacher_through_real_comfyui(teacher_and_student, inputs):
    comfy_or_skip()
    teacher, student = teacher_and_student
    x, context = inputs
    sd = {k: v.clone() for k, v in teacher.dit.state_dict().items()}
    patcher = load_tiny_wan_comfy(sd)
    from rehyat.integrations.comfyui_wan import patch_comfy_wan

    sigma = torch.tensor([SIGMA])
    with torch.inference_mode():
        softmax = patcher.model.apply_model(x, sigma, c_crossattn=context)
        expected_softmax = x - SIGMA * teacher.dit(x, sigma * 1000, context)
        torch.testing.assert_close(softmax, expected_softmax, rtol=1e-4, atol=1e-4)
        clone = patch_comfy_wan(patcher, CONVERSION, converted_blocks(student), forward_mode="recurrent")
        clone.patch_model(device_to=clone.load_device)
        try:
            patched = clone.model.apply_model(
                x, sigma, c_crossattn=context, transformer_options={"wrappers": clone.wrappers}
            )
        finally:
            clone.unpatch_model(device_to=clone.offload_device)
        expected = x - SIGMA * forward_recurrent(student, x, sigma * 1000, context)
    assert (patched - softmax).abs().max() > 1e-3
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-4)


def test_teacher_through_diffusers(teacher_and_student, inputs):
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers not installed: pip install -e '.[diffusers]'"
    )
    from rehyat.integrations.diffusers_wan import patch_diffusers_wan

    teacher, student = teacher_and_student
    x, context = inputs
    c = teacher.config.dit
    model = diffusers.WanTransformer3DModel(
        patch_size=c.patch_size,
        num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim,
        in_channels=c.in_dim,
        out_channels=c.out_dim,
        text_dim=c.text_dim,
        freq_dim=c.freq_dim,
        ffn_dim=c.ffn_dim,
        num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm,
        eps=c.eps,
        rope_max_seq_len=1024,
    ).eval()
    model.load_state_dict(wan_state_dict_to_diffusers(teacher.dit.state_dict()), strict=True)
    t = torch.tensor([SIGMA * 1000])
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, t, context, return_dict=False)[0], teacher.dit(x, t, context), rtol=1e-4, atol=1e-4
        )
        with patch_diffusers_wan(model, CONVERSION, converted_blocks(student), forward_mode="recurrent"):
            patched = model(x, t, context, return_dict=False)[0]
        torch.testing.assert_close(patched, forward_recurrent(student, x, t, context), rtol=1e-4, atol=1e-4)
