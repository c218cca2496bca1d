"""rehyat.models.wan.WanDiT against real ComfyUI's WanModel and diffusers' WanTransformer3DModel.

Same weights → same numbers (fp32, CPU), for odd latent sizes that need ComfyUI's circular
padding; plus config detection, strict loading, hooks on the attention submodule and gradient
checkpointing.
"""

from __future__ import annotations

import pytest
import torch
from comfy_support import WAN_TEXT_DIM, comfy_or_skip, load_tiny_wan_comfy, tiny_wan_state_dict

from rehyat.hybrid import FrameGrid
from rehyat.keymap import wan_state_dict_to_diffusers
from rehyat.models.wan import WanDiT, WanDiTConfig
from rehyat.models.wan_checkpoint import canonical_state_dict, detect_config
from rehyat.models.wan_layers import SoftmaxAttention, rope_frequencies


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def perturbed(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Add N(0, std) to every parameter (zero-initialised heads and modulations included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * std)
    return model.eval()


# --- real ComfyUI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy():
    return comfy_or_skip()


@pytest.mark.parametrize("latent", [(1, 16, 5, 8, 6), (2, 16, 4, 7, 5)])
def test_equals_comfyui_wanmodel(comfy, latent):
    sd = tiny_wan_state_dict(seed=3)
    patcher = load_tiny_wan_comfy(sd)
    comfy_wan = patcher.get_model_object("diffusion_model")
    ours = WanDiT.from_state_dict(sd).eval()
    assert ours.config.num_heads == comfy_wan.num_heads and ours.config.head_dim == 128
    x = seeded(latent, 1)
    t = torch.tensor([700.0, 120.0][: latent[0]])
    ctx = seeded((latent[0], 9, WAN_TEXT_DIM), 2)
    with torch.no_grad():
        expected = comfy_wan(x, t, ctx)
        got = ours(x, t, ctx)
    assert got.shape == expected.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_saved_weights_load_in_comfyui(comfy):
    """A WanDiT state dict is a ComfyUI diffusion model (dim a multiple of 128, text_dim 4096)."""
    config = WanDiTConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=12, out_dim=12)
    ours = perturbed(WanDiT(config), seed=5)
    patcher = load_tiny_wan_comfy({k: v.clone() for k, v in ours.state_dict().items()})
    x, t, ctx = seeded((1, 12, 3, 6, 4), 1), torch.tensor([300.0]), seeded((1, 5, WAN_TEXT_DIM), 2)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x, t, ctx), patcher.get_model_object("diffusion_model")(x, t, ctx), rtol=1e-4, atol=1e-5
        )


# --- diffusers --------------------------------------------------------------------------------------

DIFFUSERS_TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=8,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
)


def diffusers_model(**extra):
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers not installed: pip install -e '.[diffusers]'"
    )
    torch.manual_seed(0)
    return perturbed(diffusers.WanTransformer3DModel(**DIFFUSERS_TINY, **extra))


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_equals_diffusers_transformer(variant):
    extra = {"image_dim": 8, "added_kv_proj_dim": 24} if variant == "i2v" else {}
    reference = diffusers_model(**extra)
    ours = WanDiT.from_state_dict(reference.state_dict(), num_heads=2).eval()
    assert ours.config.model_type == variant and ours.config.head_dim == 12
    x = seeded((1, 4, 5, 6, 8), 1)
    t = torch.tensor([637.0])
    text = seeded((1, 512 if variant == "i2v" else 7, 16), 2)  # diffusers' I2V: last 512 tokens are text
    image = seeded((1, 5, 8), 3) if variant == "i2v" else None
    with torch.no_grad():
        expected = reference(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=text,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
        got = ours(x, t, text, clip_fea=image)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --- config detection and loading ----------------------------------------------------------------


def small_config(**kw) -> WanDiTConfig:
    base = dict(dim=24, ffn_dim=32, num_heads=2, num_layers=3, in_dim=4, out_dim=4, text_dim=16, freq_dim=8)
    return WanDiTConfig(**{**base, **kw})


def test_detect_config_round_trips_every_shape():
    for config in (
        small_config(),
        small_config(model_type="i2v", clip_dim=8, flf_pos_embed_token_number=6),
        small_config(patch_size=(1, 4, 4), out_dim=3),
    ):
        sd = WanDiT(config).state_dict()
        assert detect_config(sd, num_heads=2) == config
        assert WanDiTConfig.from_dict(config.to_dict()) == config


def test_from_state_dict_is_strict_and_accepts_comfyui_prefix():
    model = perturbed(WanDiT(small_config()))
    sd = {"model.diffusion_model." + k: v for k, v in model.state_dict().items()}
    sd["first_stage_model.decoder.weight"] = torch.zeros(1)
    loaded = WanDiT.from_state_dict(sd, num_heads=2)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    broken = dict(model.state_dict())
    broken["blocks.0.self_attn.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="blocks.0.self_attn.extra"):
        WanDiT.from_state_dict(broken, num_heads=2)
    with pytest.raises(ValueError, match="missing"):
        detect_config({"foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="num_heads"):
        detect_config(model.state_dict())  # dim 24 is not a multiple of 128: heads must be given


def test_canonical_state_dict_renames_diffusers_keys():
    sd = WanDiT(small_config()).state_dict()
    assert set(canonical_state_dict(wan_state_dict_to_diffusers(sd))) == set(sd)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_heads"):
        small_config(num_heads=5)
    with pytest.raises(ValueError, match="model_type"):
        small_config(model_type="vace")
    with pytest.raises(ValueError, match="unknown WanDiTConfig"):
        WanDiTConfig.from_dict({"width": 3})


def test_forward_rejects_bad_inputs():
    model = WanDiT(small_config())
    x, ctx = torch.zeros(1, 4, 2, 4, 4), torch.zeros(1, 3, 16)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.zeros(1, 2), ctx)
    with pytest.raises(ValueError, match="context"):
        model(x, torch.zeros(1), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1), ctx)
    with pytest.raises(ValueError, match="clip_fea"):
        model(x, torch.zeros(1), ctx, clip_fea=torch.zeros(1, 2, 1280))


# --- attention submodule, RoPE, checkpointing ------------------------------------------------------


def test_attention_hook_sees_normed_rotated_qkv():
    model = perturbed(WanDiT(small_config()))
    seen = {}
    attn = model.blocks[1].self_attn
    assert isinstance(attn.attention, SoftmaxAttention)
    attn.attention.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    x, t, ctx = seeded((1, 4, 3, 4, 6), 1), torch.tensor([10.0]), seeded((1, 3, 16), 2)
    with torch.no_grad():
        model(x, t, ctx)
    q, k, v, run = seen["args"]
    assert q.shape == k.shape == v.shape == seen["out"].shape == (1, 2, 3 * 2 * 3, 12)
    assert run.grid == FrameGrid(3, 2, 3)
    torch.testing.assert_close(seen["out"], torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_rope_is_relative_in_frames():
    """Rotated q·k depends on the frame distance only: shifting every frame leaves scores unchanged."""
    config = small_config()
    grid = FrameGrid(4, 2, 2)
    a, b = rope_frequencies(config, grid, 0.0), rope_frequencies(config, grid, 7.0)
    from rehyat.models.wan_layers import apply_rope

    q, k = seeded((1, grid.tokens, 2, 12), 1), seeded((1, grid.tokens, 2, 12), 2)
    scores = [torch.einsum("bnhd,bmhd->bhnm", apply_rope(q, f), apply_rope(k, f)) for f in (a, b)]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, b)


def test_gradient_checkpointing_gives_same_gradients():
    x, t, ctx = seeded((2, 4, 3, 4, 4), 1), torch.tensor([10.0, 900.0]), seeded((2, 3, 16), 2)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = perturbed(WanDiT(small_config()))
        model.enable_gradient_checkpointing(enabled)
        model.train()
        model(x, t, ctx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_untrained_model_predicts_zero_and_frame_offset_moves_rope():
    model = WanDiT(small_config())
    x, t, ctx = seeded((1, 4, 3, 4, 4), 1), torch.tensor([10.0]), seeded((1, 3, 16), 2)
    assert torch.count_nonzero(model(x, t, ctx)) == 0  # zero-initialised head
    perturbed(model)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, ctx), model(x, t, ctx, frame_offset=5))


# --- ReHyAt conversion ------------------------------------------------------------------------------

from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig  # noqa: E402
from rehyat.models.wan_rehyat import (  # noqa: E402
    ReHyAtAttention,
    conversion_config,
    convert,
    converted_blocks,
    forward_recurrent,
    load_phi,
    phi_parameters,
    save_phi,
    unconvert,
)

SMALL_PHI = FeatureMapConfig(hidden_dim=16, feature_dim=16)


def rehyat_config(tc=2, to=1, causal=True, **kw) -> ConversionConfig:
    return ConversionConfig(
        attention=HybridAttentionConfig(
            chunk_frames=tc, overlap_frames=to, causal=causal, feature_map=SMALL_PHI
        ),
        **kw,
    )


def converted_model(config: ConversionConfig | None = None, seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    model = perturbed(WanDiT(small_config()), seed=seed)
    convert(model, config or rehyat_config())
    with torch.no_grad():  # φ with visible effect
        for p in phi_parameters(model):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9)) * 0.2)
    return model


@pytest.mark.parametrize(("tc", "to", "frames"), [(2, 1, 7), (3, 0, 6), (1, 2, 4)])
def test_recurrent_forward_equals_parallel(tc, to, frames):
    model = converted_model(rehyat_config(tc, to))
    x, t, ctx = seeded((2, 4, frames, 4, 6), 1), torch.tensor([500.0, 20.0]), seeded((2, 3, 16), 2)
    states: dict = {}
    with torch.no_grad():
        parallel = model(x, t, ctx)
        recurrent = forward_recurrent(model, x, t, ctx, states_out=states)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-5, atol=1e-5)
    assert sorted(states) == [0, 1, 2] and states[0].frames_seen == frames


def test_conversion_changes_only_self_attention_and_keeps_phi_in_the_tree():
    torch.manual_seed(0)
    model = perturbed(WanDiT(small_config()))
    x, t, ctx = seeded((1, 4, 6, 4, 4), 1), torch.tensor([500.0]), seeded((1, 3, 16), 2)
    with torch.no_grad():
        softmax = model(x, t, ctx)
    convert(model, rehyat_config(num_blocks=2, placement="last"))
    assert sorted(converted_blocks(model)) == [1, 2] and conversion_config(model).num_blocks == 2
    assert isinstance(model.blocks[2].self_attn.attention, ReHyAtAttention)
    assert isinstance(model.blocks[0].self_attn.attention, SoftmaxAttention)
    keys = [k for k in model.state_dict() if "feature_maps" in k]
    assert keys and all(
        k.startswith(("blocks.1.self_attn.attention.hybrid.", "blocks.2.self_attn.attention.hybrid."))
        for k in keys
    )
    with torch.no_grad():
        assert not torch.allclose(model(x, t, ctx), softmax)
    with pytest.raises(ValueError, match="already converted"):
        convert(model, rehyat_config())
    with pytest.raises(ValueError, match=r"blocks \[0\] still use softmax"):
        forward_recurrent(model, x, t, ctx)
    removed = unconvert(model)
    assert sorted(removed) == [1, 2] and conversion_config(model) is None
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), softmax)
    with pytest.raises(ValueError, match="needs a WanDiT converted"):
        forward_recurrent(model, x, t, ctx)


def test_one_chunk_covering_every_frame_is_the_softmax_model():
    torch.manual_seed(0)
    model = perturbed(WanDiT(small_config()))
    x, t, ctx = seeded((1, 4, 5, 4, 4), 1), torch.tensor([500.0]), seeded((1, 3, 16), 2)
    with torch.no_grad():
        softmax = model(x, t, ctx)
        convert(model, rehyat_config(tc=5, to=0))
        torch.testing.assert_close(model(x, t, ctx), softmax, rtol=1e-5, atol=1e-5)


def test_phi_file_round_trip_and_fingerprint_check(tmp_path):
    model = converted_model()
    path = save_phi(model, tmp_path / "phi.safetensors", training={"stage": "distill", "steps": 3})
    torch.manual_seed(0)
    fresh = load_phi(perturbed(WanDiT(small_config()), seed=0), path)
    x, t, ctx = seeded((1, 4, 5, 4, 4), 1), torch.tensor([500.0]), seeded((1, 3, 16), 2)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, ctx), model(x, t, ctx))
    other = perturbed(WanDiT(small_config()), seed=4)
    with pytest.raises(ValueError):
        load_phi(other, path)  # φ made for another base model


def test_converted_model_trains_phi_with_gradient_checkpointing():
    x, t, ctx = seeded((1, 4, 5, 4, 4), 1), torch.tensor([500.0]), seeded((1, 3, 16), 2)
    grads = []
    for enabled in (False, True):
        model = converted_model()
        model.enable_gradient_checkpointing(enabled)
        model(x, t, ctx).square().mean().backward()
        grads.append([p.grad.clone() for p in phi_parameters(model)])
    assert all(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_recurrent_continuation_from_states_equals_one_pass():
    model = converted_model(rehyat_config(tc=2, to=1))
    x, t, ctx = seeded((1, 4, 7, 4, 4), 1), torch.tensor([500.0]), seeded((1, 3, 16), 2)
    states: dict = {}
    with torch.no_grad():
        whole = forward_recurrent(model, x, t, ctx)
        head = forward_recurrent(model, x[:, :, :4], t, ctx, states_out=states)
        tail = forward_recurrent(model, x[:, :, 4:], t, ctx, frame_offset=4, states=states)
    torch.testing.assert_close(torch.cat([head, tail], dim=2), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk boundary"):
        forward_recurrent(model, x[:, :, 3:], t, ctx, frame_offset=3, states=states)
