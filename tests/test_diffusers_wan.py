"""Tests of rehyat.integrations.diffusers_wan on a real, tiny diffusers ``WanTransformer3DModel``.

fp32 on CPU; random weights with a fixed seed, perturbed so that every layer (modulation, norms,
attention) does something visible. Skipped when diffusers is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed: pip install -e '.[diffusers]'")

from diffusers import WanTransformer3DModel  # noqa: E402

from rehyat.config import ConversionConfig, HybridAttentionConfig  # noqa: E402
from rehyat.hybrid import HybridAttention  # noqa: E402
from rehyat.integrations.diffusers_rope import wan_frame_grid, wan_rotary_for_frames  # noqa: E402
from rehyat.integrations.diffusers_wan import (  # noqa: E402
    DiffusersReHyAtPatch,
    ReHyAtWanAttnProcessor,
    patch_diffusers_wan,
)
from rehyat.ops import rehyat_attention  # noqa: E402

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=8, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # head_dim 12 -> RoPE t/h/w dims 4/4/4 (h = w = 2·(d // 6) must be even)
TEXT_LEN = 5


def make_model(seed: int = 0, **overrides) -> WanTransformer3DModel:
    """A tiny Wan transformer with every parameter perturbed by N(0, 0.1)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def model() -> WanTransformer3DModel:
    return make_model()


def inputs(frames: int = 7, height: int = 6, width: int = 10, batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.tensor([637.0, 250.0][:batch]),
        encoder_hidden_states=torch.randn(batch, TEXT_LEN, 16, generator=g),
    )


def cfg(chunk: int = 3, overlap: int = 1, causal: bool = True, **kw) -> ConversionConfig:
    return ConversionConfig(attention=HybridAttentionConfig(chunk, overlap, causal), **kw)


@torch.no_grad()
def run(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).sample


def processors(model: WanTransformer3DModel) -> list[tuple[object, object]]:
    return [(b.attn1.processor, b.attn2.processor) for b in model.blocks]


# --------------------------------------------------------------------------------------------------
# patch / unpatch
# --------------------------------------------------------------------------------------------------


def test_unpatch_restores_the_model_bit_identically(model):
    x = inputs()
    before_procs = processors(model)
    before = run(model, x)
    with patch_diffusers_wan(model, cfg()) as patch:
        assert isinstance(patch, DiffusersReHyAtPatch) and patch.active
        patched = run(model, x)
    assert not patch.active
    flat_after = [p for pair in processors(model) for p in pair]
    flat_before = [p for pair in before_procs for p in pair]
    assert all(a is b for a, b in zip(flat_after, flat_before, strict=True))
    assert "forward" not in model.__dict__ and not hasattr(model, "_rehyat_patch_context")
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert torch.equal(run(model, x), before)
    # ReHyAt was really active: chunked softmax + linear attention differs from full softmax
    assert (patched - before).abs().max() > 1e-2
    patch.unpatch()  # idempotent


@pytest.mark.parametrize("forward_mode", ["parallel", "recurrent"])
def test_one_chunk_is_full_softmax(model, forward_mode):
    """chunk_frames ≥ frames: ReHyAt is the model's own softmax attention (checks q/k/v, RoPE, out)."""
    x = inputs(frames=5)
    ref = run(model, x)
    with patch_diffusers_wan(model, cfg(chunk=5, overlap=0), forward_mode=forward_mode):
        out = run(model, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_only_chosen_self_attention_blocks_change():
    model = make_model(num_layers=4)
    original = processors(model)
    keys = list(model.state_dict())
    with patch_diffusers_wan(model, cfg(blocks=(1, 3))) as patch:
        assert patch.blocks == (1, 3) and sorted(patch.hybrid) == [1, 3]
        for i, (attn1, attn2) in enumerate(processors(model)):
            assert attn2 is original[i][1]
            if i in (1, 3):
                assert isinstance(attn1, ReHyAtWanAttnProcessor) and attn1.hybrid is patch.hybrid[i]
            else:
                assert attn1 is original[i][0]
        # φ is part of the model's module tree (DDP, .to(), offloading see it) …
        added = [k for k in model.state_dict() if k not in keys]
        assert len(added) == 2 * 8 and all(k.startswith(("blocks.1.attn1.processor.hybrid.",
                                                          "blocks.3.attn1.processor.hybrid.")) for k in added)
        model_params = {id(p) for p in model.parameters()}
        assert len(list(patch.parameters())) == 2 * 8  # 2 blocks × (φq, φk) × 4 tensors
        assert all(id(p) in model_params for p in patch.parameters())
    assert list(model.state_dict()) == keys  # … and leaves it with unpatch


def test_patching_twice_is_an_error(model):
    with patch_diffusers_wan(model, cfg()):
        with pytest.raises(RuntimeError, match="already ReHyAt-patched"):
            patch_diffusers_wan(model, cfg())
    patch_diffusers_wan(model, cfg()).unpatch()  # fine again once unpatched


def test_processor_outside_a_model_call_fails_loudly(model):
    with patch_diffusers_wan(model, cfg(blocks=(0,))):
        block = model.blocks[0]
        with pytest.raises(RuntimeError, match="without a frame grid"):
            block.attn1(torch.randn(1, 15, 24), None, None, None)


# --------------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------------


def test_parallel_block_equals_the_reference_op(model):
    """The processor hands HybridAttention the right (B, H, N, d) tensors and grid."""
    x = inputs(frames=7, height=6, width=10)
    calls: list[tuple] = []
    with patch_diffusers_wan(model, cfg(blocks=(1,))) as patch:
        hybrid = patch.hybrid[1]
        handle = hybrid.register_forward_hook(lambda m, args, out: calls.append((*args, out)))
        run(model, x)
        handle.remove()
    (q, k, v, r, out), = calls
    assert q.shape == (2, 2, 7 * 3 * 5, 12) and r.grid.tokens_per_frame == 15 and r.mode == "parallel"
    maps = hybrid.feature_maps
    ref = rehyat_attention(q.double(), k.double(), v.double(), phi_q=maps.phi_q, phi_k=maps.phi_k,
                           tokens_per_frame=15, chunk_frames=3, overlap_frames=1, mode="naive")
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_recurrent_forward_equals_parallel(variant):
    """T = 7 latent frames, Tc = 3 (partial last chunk), To = 1, odd token grid 3×5."""
    if variant == "i2v":
        model = make_model(image_dim=8, added_kv_proj_dim=24)
        x = inputs(frames=7, height=6, width=10)
        g = torch.Generator().manual_seed(5)
        x["encoder_hidden_states"] = torch.randn(2, 512, 16, generator=g)  # diffusers: text length 512
        x["encoder_hidden_states_image"] = torch.randn(2, 3, 8, generator=g)
    else:
        model = make_model()
        x = inputs(frames=7, height=6, width=10)
    with patch_diffusers_wan(model, cfg()) as patch:
        parallel = run(model, x)
    with patch_diffusers_wan(model, cfg(), feature_maps=patch.hybrid, forward_mode="recurrent") as rec:
        assert "forward" in model.__dict__
        with torch.no_grad():
            out = model(**x, return_dict=False)
        assert isinstance(out, tuple) and len(out) == 1
        assert sorted(rec.last_states) == [0, 1]
        assert all(s.frames_seen == 7 for s in rec.last_states.values())
    assert "forward" not in model.__dict__
    assert out[0].shape == parallel.shape == x["hidden_states"].shape
    torch.testing.assert_close(out[0], parallel, atol=1e-5, rtol=1e-5)


def test_recurrent_per_token_timestep_equals_parallel(model):
    """Wan2.2-style timestep (B, N): sliced per chunk for the blocks and the head."""
    x = inputs(frames=5, batch=1)
    x["timestep"] = torch.linspace(100.0, 900.0, 5 * 3 * 5)[None]  # (1, N)
    with patch_diffusers_wan(model, cfg()) as patch:
        parallel = run(model, x)
    with patch_diffusers_wan(model, cfg(), feature_maps=patch.hybrid, forward_mode="recurrent"):
        out = run(model, x)
    torch.testing.assert_close(out, parallel, atol=1e-5, rtol=1e-5)


def test_odd_latent_sizes_are_floored_like_diffusers(model):
    x = inputs(frames=4, height=7, width=9, batch=1)  # -> 4 × 3 × 4 tokens; H, W remainders dropped
    assert wan_frame_grid(model, x["hidden_states"]).tokens == 4 * 3 * 4
    ref = run(model, x)
    with patch_diffusers_wan(model, cfg(chunk=2, overlap=1)) as patch:
        parallel = run(model, x)
    with patch_diffusers_wan(model, cfg(chunk=2, overlap=1), patch.hybrid, forward_mode="recurrent"):
        recurrent = run(model, x)
    assert ref.shape == parallel.shape == recurrent.shape == (1, 4, 4, 6, 8)
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-5)


def test_chunk_rotary_equals_full_grid_slice(model):
    full_cos, full_sin = model.rope(torch.empty(1, 4, 7, 6, 10))  # (1, 7·15, 1, 12)
    for f0, f1 in [(0, 3), (3, 6), (6, 7), (2, 7)]:
        cos, sin = wan_rotary_for_frames(model.rope, f0, f1, 3, 5)
        rows = slice(f0 * 15, f1 * 15)
        assert torch.equal(cos, full_cos[:, rows]) and torch.equal(sin, full_sin[:, rows])
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        wan_rotary_for_frames(model.rope, 30, 33, 3, 5)


def test_grid_follows_the_latent(model):
    """Two latent sizes in a row on one patch: each call reads its own grid."""
    a, b = inputs(frames=4, height=6, width=10), inputs(frames=6, height=8, width=4, seed=3)
    with patch_diffusers_wan(model, cfg(chunk=2)) as patch:
        out_a, out_b = run(model, a), run(model, b)
    with patch_diffusers_wan(model, cfg(chunk=2), patch.hybrid, forward_mode="recurrent"):
        rec_b, rec_a = run(model, b), run(model, a)
    assert out_a.shape == a["hidden_states"].shape and out_b.shape == b["hidden_states"].shape
    torch.testing.assert_close(rec_a, out_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec_b, out_b, atol=1e-5, rtol=1e-5)


def test_gradients_reach_phi_only_through_the_patch(model):
    with patch_diffusers_wan(model, cfg()) as patch:
        model.requires_grad_(False)  # φ is in the model's tree: freeze everything, then train φ only
        for param in patch.parameters():
            param.requires_grad_(True)
        try:
            run_grad = model(**inputs(frames=7, batch=1)).sample
            run_grad.square().mean().backward()
        finally:
            model.requires_grad_(True)
        grads = [p.grad for p in patch.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (cfg(blocks=(1,)), r"blocks \[0\]"),
        (cfg(num_blocks=1, placement="first"), r"blocks \[1\]"),
        (cfg(causal=False), "causal"),
    ],
)
def test_recurrent_refuses_unconverted_or_non_causal(model, config, match):
    original = processors(model)
    with pytest.raises(ValueError, match=match):
        patch_diffusers_wan(model, config, forward_mode="recurrent")
    assert processors(model) == original and "forward" not in model.__dict__
    assert not model._forward_pre_hooks


def test_recurrent_refuses_an_already_wrapped_forward(model):
    model.forward = model.forward  # stands in for an offload / caching wrapper
    try:
        with pytest.raises(ValueError, match="already overridden"):
            patch_diffusers_wan(model, cfg(), forward_mode="recurrent")
    finally:
        del model.forward


def test_unpatch_refuses_when_forward_was_rewrapped_later(model):
    patch = patch_diffusers_wan(model, cfg(), forward_mode="recurrent")
    mine = model.forward
    model.forward = lambda *a, **k: mine(*a, **k)
    with pytest.raises(RuntimeError, match="replaced after"):
        patch.unpatch()
    model.forward = mine
    patch.unpatch()
    assert "forward" not in model.__dict__


@pytest.mark.parametrize(
    ("make_maps", "match"),
    [
        (lambda a: {0: HybridAttention(2, 12, a, 0)}, "cover blocks"),
        (lambda a: {0: HybridAttention(2, 12, a, 1), 1: HybridAttention(2, 12, a, 1)}, "block_index"),
        (lambda a: {i: HybridAttention(3, 8, a, i) for i in (0, 1)}, "heads"),
        (lambda a: {i: HybridAttention(2, 12, HybridAttentionConfig(2), i) for i in (0, 1)}, "chunk_frames"),
    ],
)
def test_feature_maps_are_checked(model, make_maps: Callable, match):
    config = cfg()
    with pytest.raises(ValueError, match=match):
        patch_diffusers_wan(model, config, feature_maps=make_maps(config.attention))
    assert not hasattr(model, "_rehyat_patch_context")


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="forward_mode"):
        patch_diffusers_wan(model, cfg(), forward_mode="sequential")
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        patch_diffusers_wan(torch.nn.Linear(2, 2), cfg())
    with pytest.raises(ValueError, match="out of range"):
        patch_diffusers_wan(model, cfg(blocks=(5,)))


# --------------------------------------------------------------------------------------------------
# training: φ in the module tree, gradient checkpointing
# --------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_keeps_the_grid_and_the_gradients():
    """Recomputed blocks see the same frame grid (it travels in rotary_emb): same gradients as without."""
    from rehyat.training.finetune import set_gradient_checkpointing

    x = inputs(frames=7, batch=1)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model()
        with patch_diffusers_wan(model, cfg()):
            set_gradient_checkpointing(model, checkpointing)  # diffusers' own switch
            assert model.gradient_checkpointing is checkpointing
            model.train()
            model(**x).sample.square().mean().backward()
            set_gradient_checkpointing(model, False)
            return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    assert sum(".attn1.processor.hybrid." in k for k in plain) == 2 * 8  # φ gets gradients in the tree
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_phi_moves_with_the_model():
    model = make_model()
    with patch_diffusers_wan(model, cfg()) as patch:
        model.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in patch.parameters())
        x = {k: v.double() for k, v in inputs(frames=4, batch=1).items()}
        out = run(model, x)
        assert out.dtype == torch.float64 and torch.isfinite(out).all()
