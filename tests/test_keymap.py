"""Tests of rehyat.keymap: Wan (ComfyUI) <-> diffusers key names of Wan2.1 transformer weights.

The first half needs nothing but the module; the second half checks the mapping against the real
diffusers ``WanTransformer3DModel`` built with a tiny config (skipped when diffusers is absent).
"""

from __future__ import annotations

import re

import pytest
import torch

from rehyat import keymap
from rehyat.keymap import (
    COMFYUI_CHECKPOINT_PREFIX,
    detect_layout,
    diffusers_key_to_wan,
    diffusers_state_dict_to_wan,
    self_attention_keys,
    wan_key_to_diffusers,
    wan_state_dict_to_diffusers,
)

# Every parameter name of an original Wan2.1 transformer checkpoint (T2V, I2V and FLF2V), written
# out independently of the module under test; ``{N}`` stands for a block index.
WAN_KEY_PATTERNS: frozenset[str] = frozenset(
    [f"patch_embedding.{p}" for p in ("weight", "bias")]
    + [
        f"{m}.{i}.{p}"
        for m in ("text_embedding", "time_embedding")
        for i in (0, 2)
        for p in ("weight", "bias")
    ]
    + [f"time_projection.1.{p}" for p in ("weight", "bias")]
    + [f"head.head.{p}" for p in ("weight", "bias")]
    + ["head.modulation", "img_emb.emb_pos"]
    + [f"img_emb.proj.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")]
    + ["blocks.{N}.modulation"]
    + [
        f"blocks.{{N}}.{a}.{m}.{p}"
        for a in ("self_attn", "cross_attn")
        for m in "qkvo"
        for p in ("weight", "bias")
    ]
    + [
        f"blocks.{{N}}.{a}.{m}.weight"
        for a in ("self_attn", "cross_attn")
        for m in ("norm_q", "norm_k")
    ]
    + [f"blocks.{{N}}.cross_attn.{m}.{p}" for m in ("k_img", "v_img") for p in ("weight", "bias")]
    + ["blocks.{N}.cross_attn.norm_k_img.weight"]
    + [f"blocks.{{N}}.norm3.{p}" for p in ("weight", "bias")]
    + [f"blocks.{{N}}.ffn.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
)

_BLOCK_INDEX = re.compile(r"^blocks\.\d+\.")


def _pattern(key: str) -> str:
    """``key`` with its block index replaced by ``{N}``."""
    return _BLOCK_INDEX.sub("blocks.{N}.", key)


# --------------------------------------------------------------------------------------------
# pure string mapping, one case per key family
# --------------------------------------------------------------------------------------------

KEY_PAIRS: list[tuple[str, str]] = [
    # patch embedding (same name in both layouts)
    ("patch_embedding.weight", "patch_embedding.weight"),
    ("patch_embedding.bias", "patch_embedding.bias"),
    # text embedding
    ("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"),
    ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
    # time embedding and projection
    ("time_embedding.0.bias", "condition_embedder.time_embedder.linear_1.bias"),
    ("time_embedding.2.weight", "condition_embedder.time_embedder.linear_2.weight"),
    ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
    ("time_projection.1.bias", "condition_embedder.time_proj.bias"),
    # output head
    ("head.head.weight", "proj_out.weight"),
    ("head.head.bias", "proj_out.bias"),
    ("head.modulation", "scale_shift_table"),
    # block modulation
    ("blocks.0.modulation", "blocks.0.scale_shift_table"),
    ("blocks.39.modulation", "blocks.39.scale_shift_table"),
    # self-attention
    ("blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight"),
    ("blocks.1.self_attn.k.bias", "blocks.1.attn1.to_k.bias"),
    ("blocks.2.self_attn.v.weight", "blocks.2.attn1.to_v.weight"),
    ("blocks.3.self_attn.o.weight", "blocks.3.attn1.to_out.0.weight"),
    ("blocks.3.self_attn.o.bias", "blocks.3.attn1.to_out.0.bias"),
    ("blocks.10.self_attn.norm_q.weight", "blocks.10.attn1.norm_q.weight"),
    ("blocks.10.self_attn.norm_k.weight", "blocks.10.attn1.norm_k.weight"),
    # cross-attention norm: Wan's norm3 is diffusers' norm2
    ("blocks.5.norm3.weight", "blocks.5.norm2.weight"),
    ("blocks.5.norm3.bias", "blocks.5.norm2.bias"),
    # cross-attention
    ("blocks.7.cross_attn.q.weight", "blocks.7.attn2.to_q.weight"),
    ("blocks.7.cross_attn.k.bias", "blocks.7.attn2.to_k.bias"),
    ("blocks.7.cross_attn.v.weight", "blocks.7.attn2.to_v.weight"),
    ("blocks.7.cross_attn.o.bias", "blocks.7.attn2.to_out.0.bias"),
    ("blocks.7.cross_attn.norm_q.weight", "blocks.7.attn2.norm_q.weight"),
    ("blocks.7.cross_attn.norm_k.weight", "blocks.7.attn2.norm_k.weight"),
    # I2V cross-attention image branch
    ("blocks.8.cross_attn.k_img.weight", "blocks.8.attn2.add_k_proj.weight"),
    ("blocks.8.cross_attn.v_img.bias", "blocks.8.attn2.add_v_proj.bias"),
    ("blocks.8.cross_attn.norm_k_img.weight", "blocks.8.attn2.norm_added_k.weight"),
    # feed-forward
    ("blocks.4.ffn.0.weight", "blocks.4.ffn.net.0.proj.weight"),
    ("blocks.4.ffn.2.bias", "blocks.4.ffn.net.2.bias"),
    # I2V / FLF2V CLIP image embedding
    ("img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight"),
    ("img_emb.proj.1.bias", "condition_embedder.image_embedder.ff.net.0.proj.bias"),
    ("img_emb.proj.3.weight", "condition_embedder.image_embedder.ff.net.2.weight"),
    ("img_emb.proj.4.bias", "condition_embedder.image_embedder.norm2.bias"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
]


@pytest.mark.parametrize(("wan", "diffusers"), KEY_PAIRS)
def test_key_family_maps_both_ways(wan: str, diffusers: str) -> None:
    assert wan_key_to_diffusers(wan) == diffusers
    assert diffusers_key_to_wan(diffusers) == wan


def test_module_patterns_are_the_original_wan_names() -> None:
    assert keymap.WAN_KEY_PATTERNS == WAN_KEY_PATTERNS
    assert len(keymap.DIFFUSERS_KEY_PATTERNS) == len(WAN_KEY_PATTERNS)


def test_every_pattern_round_trips() -> None:
    for pattern in WAN_KEY_PATTERNS:
        key = pattern.replace("{N}", "17")
        back = diffusers_key_to_wan(wan_key_to_diffusers(key))
        assert back == key


@pytest.mark.parametrize(
    "key",
    [
        "blocks.0.norm2.weight",  # Wan's FFN norm has no weights
        "blocks.0.attn1.to_q.weight",  # a diffusers name
        "blocks.0.self_attn.q.scale_weight",  # fp8-scaled checkpoint extra
        "blocks.01.self_attn.q.weight",  # malformed index
        "blocks.x.self_attn.q.weight",
        "blocks.0.self_attn.q",  # missing leaf
        "head.modulation.weight",
        "vace_blocks.0.after_proj.weight",  # VACE is not supported
        "model.diffusion_model.head.head.weight",  # prefix not stripped
        "",
    ],
)
def test_unknown_wan_key_raises_naming_it(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        wan_key_to_diffusers(key)


@pytest.mark.parametrize(
    "key",
    [
        "blocks.0.norm3.weight",  # diffusers' FFN norm has no weights
        "blocks.0.self_attn.q.weight",  # a Wan name
        "rope.freqs_cos",  # non-persistent buffer
        "blocks.0.attn2.norm_added_q.weight",  # ignored by diffusers, dropped only for dicts
        "scale_shift_table.weight",
        "blocks.0.attn1.to_out.1.weight",  # dropout has no weights
    ],
)
def test_unknown_diffusers_key_raises_naming_it(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        diffusers_key_to_wan(key)


def test_self_attention_keys_both_layouts() -> None:
    wan = self_attention_keys(3, "wan")
    diffusers = self_attention_keys(3, "diffusers")
    assert wan == {
        "q": "blocks.3.self_attn.q",
        "k": "blocks.3.self_attn.k",
        "v": "blocks.3.self_attn.v",
        "o": "blocks.3.self_attn.o",
        "norm_q": "blocks.3.self_attn.norm_q",
        "norm_k": "blocks.3.self_attn.norm_k",
    }
    assert diffusers == {
        "q": "blocks.3.attn1.to_q",
        "k": "blocks.3.attn1.to_k",
        "v": "blocks.3.attn1.to_v",
        "o": "blocks.3.attn1.to_out.0",
        "norm_q": "blocks.3.attn1.norm_q",
        "norm_k": "blocks.3.attn1.norm_k",
    }
    assert tuple(wan) == keymap.SELF_ATTENTION_ROLES
    for role in keymap.SELF_ATTENTION_ROLES:
        leaves = ("weight",) if role.startswith("norm") else ("weight", "bias")
        for leaf in leaves:
            assert wan_key_to_diffusers(f"{wan[role]}.{leaf}") == f"{diffusers[role]}.{leaf}"


@pytest.mark.parametrize(
    ("index", "layout"), [(-1, "wan"), (1.0, "wan"), (True, "wan"), (0, "comfy")]
)
def test_self_attention_keys_rejects_bad_arguments(index: object, layout: str) -> None:
    with pytest.raises(ValueError):
        self_attention_keys(index, layout)  # type: ignore[arg-type]


def test_state_dict_conversion_keeps_values_and_handles_prefix() -> None:
    a, b = torch.zeros(2), torch.ones(1, 6, 2)
    wan = {
        f"{COMFYUI_CHECKPOINT_PREFIX}head.head.bias": a,
        f"{COMFYUI_CHECKPOINT_PREFIX}blocks.2.modulation": b,
    }
    diffusers = wan_state_dict_to_diffusers(wan, prefix=COMFYUI_CHECKPOINT_PREFIX)
    assert diffusers == {"proj_out.bias": a, "blocks.2.scale_shift_table": b}
    assert diffusers["proj_out.bias"] is a  # passed through, not copied
    assert diffusers_state_dict_to_wan(diffusers, prefix=COMFYUI_CHECKPOINT_PREFIX) == wan
    with pytest.raises(ValueError, match="'head.head.bias'"):
        wan_state_dict_to_diffusers({"head.head.bias": a}, prefix=COMFYUI_CHECKPOINT_PREFIX)


def test_state_dict_conversion_raises_on_unknown_key() -> None:
    with pytest.raises(ValueError, match="'blocks.0.vace.weight'"):
        wan_state_dict_to_diffusers({"head.head.bias": 0, "blocks.0.vace.weight": 1})
    with pytest.raises(ValueError, match="'foo'"):
        diffusers_state_dict_to_wan({"proj_out.bias": 0, "foo": 1})


def test_diffusers_ignored_norm_added_q_is_dropped() -> None:
    sd = {"blocks.0.attn2.norm_added_q.weight": 1, "blocks.0.attn2.norm_added_k.weight": 2}
    assert diffusers_state_dict_to_wan(sd) == {"blocks.0.cross_attn.norm_k_img.weight": 2}


def test_detect_layout() -> None:
    assert detect_layout(["patch_embedding.weight", "head.head.bias"]) == "wan"
    assert detect_layout(["patch_embedding.weight", "proj_out.bias"]) == "diffusers"
    assert (
        detect_layout(
            ["x", "model.diffusion_model.blocks.0.ffn.0.weight"], prefix=COMFYUI_CHECKPOINT_PREFIX
        )
        == "wan"
    )
    with pytest.raises(ValueError):
        detect_layout(["patch_embedding.weight", "unknown"])


# --------------------------------------------------------------------------------------------
# against the real diffusers WanTransformer3DModel
# --------------------------------------------------------------------------------------------

TINY_CONFIG: dict[str, object] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,  # RoPE split t/h/w = 4/4/4
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 8,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "rope_max_seq_len": 32,
}
I2V_EXTRA: dict[str, object] = {"image_dim": 8, "added_kv_proj_dim": 24}
FLF2V_EXTRA: dict[str, object] = {**I2V_EXTRA, "pos_embed_seq_len": 6}
VARIANTS: dict[str, dict[str, object]] = {"t2v": {}, "i2v": I2V_EXTRA, "flf2v": FLF2V_EXTRA}

# diffusers' I2V attention takes the last 512 context tokens as text, the rest as image tokens.
_DIFFUSERS_I2V_TEXT_LEN = 512


def _diffusers() -> object:
    """The diffusers module, or skip the calling test."""
    return pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install diffusers -c constraints)"
    )


def _build(variant: str, seed: int) -> torch.nn.Module:
    """A tiny diffusers WanTransformer3DModel of ``variant``, randomly initialised from ``seed``."""
    model_cls = _diffusers().WanTransformer3DModel
    torch.manual_seed(seed)
    model = model_cls(**TINY_CONFIG, **VARIANTS[variant])
    with torch.no_grad():  # the zero-initialised parameters get random values too
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def _inputs(variant: str) -> dict[str, torch.Tensor]:
    """A small, fixed forward input for ``variant`` ("t2v" or "i2v")."""
    gen = torch.Generator().manual_seed(1234)
    text_len = _DIFFUSERS_I2V_TEXT_LEN if variant == "i2v" else 7
    inputs = {
        "hidden_states": torch.randn(1, 4, 3, 4, 6, generator=gen),
        "timestep": torch.tensor([637.0]),
        "encoder_hidden_states": torch.randn(1, text_len, 16, generator=gen),
    }
    if variant == "i2v":
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, 8, generator=gen)
    return inputs


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_model_round_trip_is_exact(variant: str) -> None:
    sd = _build(variant, seed=0).state_dict()
    wan = diffusers_state_dict_to_wan(sd)
    back = wan_state_dict_to_diffusers(wan)
    assert list(back) == list(sd)
    for key, tensor in sd.items():
        assert back[key] is tensor
        assert torch.equal(back[key], tensor)
    assert len(wan) == len(sd)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_model_converts_to_original_wan_names(variant: str) -> None:
    wan = diffusers_state_dict_to_wan(_build(variant, seed=0).state_dict())
    patterns = {_pattern(k) for k in wan}
    assert patterns <= WAN_KEY_PATTERNS, sorted(patterns - WAN_KEY_PATTERNS)
    assert "blocks.{N}.self_attn.q.weight" in patterns
    assert {"blocks.0.modulation", "blocks.1.norm3.weight", "head.modulation"} <= set(wan)
    has_image = variant != "t2v"
    assert ("blocks.0.cross_attn.k_img.weight" in wan) == has_image
    assert ("img_emb.proj.1.weight" in wan) == has_image
    assert ("img_emb.emb_pos" in wan) == (variant == "flf2v")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wan_layout_loads_strictly(variant: str) -> None:
    wan = diffusers_state_dict_to_wan(_build(variant, seed=0).state_dict())
    fresh = _build(variant, seed=1)
    fresh.load_state_dict(wan_state_dict_to_diffusers(wan), strict=True)


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_wan_layout_reloaded_gives_bit_identical_output(variant: str) -> None:
    source = _build(variant, seed=0)
    wan = {k: v.clone() for k, v in diffusers_state_dict_to_wan(source.state_dict()).items()}
    fresh = _build(variant, seed=1)
    inputs = _inputs(variant)
    expected = _forward(source, inputs)
    assert not torch.equal(_forward(fresh, inputs), expected)  # the load below matters
    fresh.load_state_dict(wan_state_dict_to_diffusers(wan), strict=True)
    out = _forward(fresh, inputs)
    assert out.shape == inputs["hidden_states"].shape
    assert torch.equal(out, expected)


def test_real_model_unknown_key_raises() -> None:
    sd = dict(_build("t2v", seed=0).state_dict())
    sd["blocks.0.attn1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="'blocks.0.attn1.extra.weight'"):
        diffusers_state_dict_to_wan(sd)


def test_self_attention_keys_name_real_modules() -> None:
    model = _build("t2v", seed=0)
    params = dict(model.named_parameters())
    for block in range(TINY_CONFIG["num_layers"]):  # type: ignore[arg-type]
        for role, prefix in self_attention_keys(block, "diffusers").items():
            assert f"{prefix}.weight" in params, role
        attn = model.blocks[block].attn1
        assert model.get_submodule(self_attention_keys(block, "diffusers")["o"]) is attn.to_out[0]
