"""Tests of rehyat.weights: φ files (save / load / apply / compatibility) and base-model fingerprints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import rehyat
from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.hybrid import FrameGrid, HybridAttention, ReHyAtRun
from rehyat.keymap import COMFYUI_CHECKPOINT_PREFIX, wan_state_dict_to_diffusers
from rehyat.weights import (
    FINGERPRINT_SAMPLES,
    FORMAT,
    BaseModelInfo,
    PhiWeights,
    apply_phi_tensors,
    atomic_save_file,
    check_compatible,
    check_relative_name,
    collect_phi_tensors,
    fingerprint_length,
    fingerprint_module,
    fingerprint_state_dict,
    fingerprints_match,
    infer_num_layers,
    load_phi_weights,
    resolve_in_folder,
    save_phi_weights,
    self_attention_fingerprint,
    tensor_statistics,
)
from rehyat.weights.fingerprint import _sample_indices

SMALL_MAP = FeatureMapConfig(hidden_dim=12, feature_dim=8, init_bias=-1.0)
ATTENTION = HybridAttentionConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_MAP)
CONFIG = ConversionConfig(num_blocks=2, placement="last", attention=ATTENTION)
BASE = BaseModelInfo(dim=64, num_heads=4, num_layers=4)  # head_dim 16; converted blocks (2, 3)


def wan_state_dict(num_layers: int, dim: int, *, seed: int, dtype: torch.dtype = torch.float32):
    """Random self-attention weights under the real Wan2.1 (ComfyUI) key names."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i in range(num_layers):
        for role in ("q", "k", "v", "o"):
            sd[f"blocks.{i}.self_attn.{role}.weight"] = torch.randn(dim, dim, generator=gen) * 0.02
            sd[f"blocks.{i}.self_attn.{role}.bias"] = torch.randn(dim, generator=gen) * 0.01
        for norm in ("norm_q", "norm_k"):
            sd[f"blocks.{i}.self_attn.{norm}.weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
    return {k: v.to(dtype) for k, v in sd.items()}


BASE_SD = wan_state_dict(BASE.num_layers, BASE.dim, seed=1)
BASE_FINGERPRINT = fingerprint_state_dict(BASE_SD, "wan")


def make_hybrid(seed: int, config: ConversionConfig = CONFIG, base: BaseModelInfo = BASE):
    """Converted blocks of ``base`` with seed-fixed random φ, well away from the init."""
    gen = torch.Generator().manual_seed(seed)
    hybrid = {
        b: HybridAttention(base.num_heads, base.head_dim, config.attention, b)
        for b in config.resolve_blocks(base.num_layers)
    }
    with torch.no_grad():
        for module in hybrid.values():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return hybrid


def run_blocks(hybrid, seed: int = 5):
    """Each block's output on the same seed-fixed q, k, v (5 frames of 1×2 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    grid = FrameGrid(frames=5, height=1, width=2)
    q, k, v = (torch.randn(2, BASE.num_heads, grid.tokens, BASE.head_dim, generator=gen) for _ in range(3))
    with torch.no_grad():
        return {b: m(q, k, v, ReHyAtRun(grid)) for b, m in hybrid.items()}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[int, HybridAttention]]:
    hybrid = make_hybrid(seed=0)
    path = save_phi_weights(tmp_path / "phi.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT)
    return path, hybrid


def rewrite(src: Path, dst: Path, *, drop=(), replace=None, metadata_update=None) -> Path:
    """Copy a φ file with tensors dropped / replaced and metadata changed (for error tests)."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    tensors.update(replace or {})
    metadata.update(metadata_update or {})
    safetensors.torch.save_file(tensors, dst, metadata=metadata)
    return dst


# ------------------------------------------------------------------------------------------------
# round trip
# ------------------------------------------------------------------------------------------------


def test_round_trip_identical_params_and_outputs(saved):
    path, hybrid = saved
    phi = load_phi_weights(path)
    assert phi.config == CONFIG
    assert phi.blocks == (2, 3)
    assert phi.base == BASE
    assert phi.fingerprint == BASE_FINGERPRINT
    assert phi.format_version == 1
    check_compatible(phi, BASE, BASE_FINGERPRINT)

    fresh = make_hybrid(seed=1)
    before = run_blocks(fresh)
    apply_phi_tensors(fresh, phi.tensors)
    for b in hybrid:
        for (name, p), (name2, p2) in zip(
            hybrid[b].named_parameters(), fresh[b].named_parameters(), strict=True
        ):
            assert name == name2
            torch.testing.assert_close(p, p2, atol=0, rtol=0)
    expected, got = run_blocks(hybrid), run_blocks(fresh)
    for b in hybrid:
        torch.testing.assert_close(got[b], expected[b], atol=0, rtol=0)
        assert not torch.equal(before[b], got[b])  # the load did change something


def test_file_layout_and_metadata(saved):
    path, hybrid = saved
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    assert meta["format"] == FORMAT == "rehyat-phi"
    assert meta["format_version"] == "1"
    assert json.loads(meta["block_indices"]) == [2, 3]
    assert ConversionConfig.from_dict(json.loads(meta["conversion_config"])) == CONFIG
    assert json.loads(meta["base_model"]) == {"dim": 64, "num_heads": 4, "num_layers": 4}
    assert json.loads(meta["base_fingerprint"]) == BASE_FINGERPRINT
    assert meta["rehyat_version"]
    assert keys == {
        f"blocks.{b}.{m}.{p}"
        for b in (2, 3)
        for m in ("phi_q", "phi_k")
        for p in ("weight1", "bias1", "weight2", "bias2")
    }
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert tuple(tensors["blocks.2.phi_q.weight1"].shape) == (4, 16, 12)
    assert tuple(tensors["blocks.3.phi_k.bias2"].shape) == (4, 1, 8)


def test_save_low_precision_modules_as_fp32(tmp_path):
    hybrid = make_hybrid(seed=0)
    for m in hybrid.values():
        m.to(torch.bfloat16)
    path = save_phi_weights(tmp_path / "p.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT)
    phi = load_phi_weights(path)
    assert all(t.dtype == torch.float32 for t in phi.tensors.values())
    torch.testing.assert_close(
        phi.tensors["blocks.2.phi_q.weight1"], hybrid[2].feature_maps.phi_q.weight1.float(), atol=0, rtol=0
    )


def test_collect_keys_and_apply_all_or_nothing():
    hybrid = make_hybrid(seed=0)
    tensors = collect_phi_tensors(hybrid)
    assert len(tensors) == 2 * 2 * 4
    target = make_hybrid(seed=1)
    snapshot = {k: v.clone() for k, v in collect_phi_tensors(target).items()}
    bad = dict(tensors)
    bad["blocks.3.phi_k.bias2"] = torch.zeros(4, 1, 9)
    with pytest.raises(ValueError, match=r"block 3, phi_k\.bias2.*\(4, 1, 9\).*\(4, 1, 8\)"):
        apply_phi_tensors(target, bad)
    for k, v in collect_phi_tensors(target).items():  # nothing was changed by the failed apply
        torch.testing.assert_close(v, snapshot[k], atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------
# atomic write
# ------------------------------------------------------------------------------------------------


def _failing_save(tensors, filename, metadata=None):
    """Write part of a file, then fail like a full disk."""
    with open(filename, "wb") as f:
        f.write(b"\x00" * 100)
    raise OSError(28, "No space left on device")


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save)
    with pytest.raises(OSError, match="No space"):
        save_phi_weights(tmp_path / "phi.safetensors", make_hybrid(0), CONFIG, BASE, BASE_FINGERPRINT)
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_existing_file(saved, monkeypatch):
    path, _ = saved
    original = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save)
    with pytest.raises(OSError):
        save_phi_weights(path, make_hybrid(7), CONFIG, BASE, BASE_FINGERPRINT)
    assert path.read_bytes() == original
    assert os.listdir(path.parent) == [path.name]


def test_successful_overwrite_leaves_no_temp_file(saved):
    path, _ = saved
    other = make_hybrid(7)
    save_phi_weights(path, other, CONFIG, BASE, BASE_FINGERPRINT)
    assert os.listdir(path.parent) == [path.name]
    torch.testing.assert_close(
        load_phi_weights(path).tensors["blocks.3.phi_q.weight2"],
        other[3].feature_maps.phi_q.weight2.detach(),
        atol=0,
        rtol=0,
    )


def test_save_rejects_inconsistent_inputs(tmp_path):
    hybrid = make_hybrid(0)
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match=r"modules are for blocks \[2, 3\].*selects blocks \[1, 2, 3\]"):
        three = ConversionConfig(num_blocks=3, attention=ATTENTION)
        save_phi_weights(out, hybrid, three, BASE, BASE_FINGERPRINT)
    with pytest.raises(ValueError, match="has 3 values; a 4-layer model's has 48"):
        save_phi_weights(out, hybrid, CONFIG, BASE, [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="heads=4 × head_dim=16 but the base model"):
        save_phi_weights(out, hybrid, CONFIG, BaseModelInfo(64, 8, 4), BASE_FINGERPRINT)
    with pytest.raises(ValueError, match="attention config"):
        other = ConversionConfig(num_blocks=2, attention=HybridAttentionConfig(feature_map=SMALL_MAP))
        save_phi_weights(out, hybrid, other, BASE, BASE_FINGERPRINT)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# mismatch errors
# ------------------------------------------------------------------------------------------------


def test_dim_and_heads_mismatch_names_both_sides(saved):
    phi = load_phi_weights(saved[0])
    with pytest.raises(ValueError) as info:
        check_compatible(phi, BaseModelInfo(dim=128, num_heads=8, num_layers=4), None)
    assert str(info.value) == (
        "φ file was made for dim=64, heads=4, layers=4 but this model has dim=128, heads=8, layers=4"
    )
    with pytest.raises(ValueError, match="made for dim=64, heads=4.*this model has dim=64, heads=2"):
        check_compatible(phi, BaseModelInfo(dim=64, num_heads=2, num_layers=4))


def test_layer_count_mismatch(saved):
    phi = load_phi_weights(saved[0])
    with pytest.raises(ValueError, match="made for dim=64, heads=4, layers=4 but this model has .*layers=6"):
        check_compatible(phi, BaseModelInfo(dim=64, num_heads=4, num_layers=6))


def test_blocks_out_of_range(saved):
    phi = load_phi_weights(saved[0])
    with pytest.raises(ValueError, match=r"φ file blocks \[3\] out of range for a 3-block model"):
        check_compatible(phi, BaseModelInfo(dim=64, num_heads=4, num_layers=3))


def test_fingerprint_mismatch(saved):
    phi = load_phi_weights(saved[0])
    other = fingerprint_state_dict(wan_state_dict(4, 64, seed=99), "wan")
    with pytest.raises(ValueError, match=r"fingerprint does not match .*different Wan checkpoint.*block 0"):
        check_compatible(phi, BASE, other)
    check_compatible(phi, BASE, None)  # no fingerprint: not checked
    bf16 = {k: v.to(torch.bfloat16) for k, v in BASE_SD.items()}
    check_compatible(phi, BASE, fingerprint_state_dict(bf16, "wan"))


def test_wrong_tensor_shapes(saved, tmp_path):
    path, _ = saved
    phi = load_phi_weights(path)
    tensors = dict(phi.tensors)
    tensors["blocks.2.phi_q.weight1"] = torch.zeros(4, 16, 13)
    hand_made = PhiWeights(phi.config, phi.blocks, phi.base, phi.fingerprint, tensors)
    wrong = r"block 2, phi_q\.weight1 has shape \(4, 16, 13\)"
    with pytest.raises(ValueError, match=wrong + r".*needs \(4, 16, 12\)"):
        check_compatible(hand_made, BASE)
    replace = {"blocks.2.phi_q.weight1": tensors["blocks.2.phi_q.weight1"]}
    bad = rewrite(path, tmp_path / "bad.safetensors", replace=replace)
    with pytest.raises(ValueError, match=wrong):
        load_phi_weights(bad)
    with pytest.raises(ValueError, match=r"block 2, phi_q\.weight1 has shape \(4, 16, 13\).*\(4, 16, 12\)"):
        apply_phi_tensors(make_hybrid(1), tensors)


def test_missing_and_unexpected_tensors(saved, tmp_path):
    path, _ = saved
    missing = rewrite(path, tmp_path / "m.safetensors", drop={"blocks.3.phi_k.bias2"})
    with pytest.raises(ValueError, match=r"missing tensors for block 3, phi_k\.bias2"):
        load_phi_weights(missing)
    extra = rewrite(path, tmp_path / "e.safetensors", replace={"blocks.1.phi_q.bias1": torch.zeros(4, 1, 12)})
    with pytest.raises(ValueError, match=r"outside its listed blocks \[2, 3\]: block 1, phi_q\.bias1"):
        load_phi_weights(extra)
    tensors = load_phi_weights(path).tensors
    del tensors["blocks.2.phi_k.weight2"]
    with pytest.raises(ValueError, match=r"missing for block 2, phi_k\.weight2"):
        apply_phi_tensors(make_hybrid(1), tensors)
    tensors = load_phi_weights(path).tensors
    tensors["blocks.0.phi_q.weight1"] = torch.zeros(4, 16, 12)
    with pytest.raises(ValueError, match=r"do not have: block 0, phi_q\.weight1"):
        apply_phi_tensors(make_hybrid(1), tensors)


def test_not_a_rehyat_file(tmp_path):
    plain = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a ReHyAt φ file \\(no 'format' metadata"):
        load_phi_weights(plain)
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, other, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a ReHyAt φ file \\(format='pt'"):
        load_phi_weights(other)
    garbage = tmp_path / "pickle.safetensors"
    garbage.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # e.g. a renamed torch.save file
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_phi_weights(garbage)
    with pytest.raises(FileNotFoundError):
        load_phi_weights(tmp_path / "absent.safetensors")


def test_future_and_invalid_format_version(saved, tmp_path):
    path, _ = saved
    future = rewrite(path, tmp_path / "f.safetensors", metadata_update={"format_version": "2"})
    with pytest.raises(ValueError, match="format_version 2 .*reads format_version ≤ 1: update"):
        load_phi_weights(future)
    junk = rewrite(path, tmp_path / "j.safetensors", metadata_update={"format_version": "one"})
    with pytest.raises(ValueError, match="invalid format_version 'one'"):
        load_phi_weights(junk)


def test_inconsistent_metadata(saved, tmp_path):
    path, _ = saved
    blocks = rewrite(path, tmp_path / "b.safetensors", metadata_update={"block_indices": "[1, 2]"})
    with pytest.raises(ValueError, match=r"block_indices \[1, 2\] disagree"):
        load_phi_weights(blocks)
    broken = rewrite(path, tmp_path / "c.safetensors", metadata_update={"base_model": "{"})
    with pytest.raises(ValueError, match="'base_model' is not valid JSON"):
        load_phi_weights(broken)
    short = rewrite(path, tmp_path / "s.safetensors", metadata_update={"base_fingerprint": "[1.0]"})
    with pytest.raises(ValueError, match="base_fingerprint has 1 values"):
        load_phi_weights(short)


# ------------------------------------------------------------------------------------------------
# fingerprint
# ------------------------------------------------------------------------------------------------

DIM = 160  # 160×160 weights: more than FINGERPRINT_SAMPLES values, so the strided sample is used


def test_fingerprint_same_weights_wan_bf16_vs_diffusers_fp32():
    wan = wan_state_dict(2, DIM, seed=3)
    diffusers_fp32 = wan_state_dict_to_diffusers(wan)
    assert "blocks.1.attn1.to_out.0.weight" in diffusers_fp32
    comfy_bf16 = {COMFYUI_CHECKPOINT_PREFIX + k: v.to(torch.bfloat16) for k, v in wan.items()}
    a = fingerprint_state_dict(comfy_bf16, "wan", prefix=COMFYUI_CHECKPOINT_PREFIX)
    b = fingerprint_state_dict(diffusers_fp32, "diffusers")
    assert len(a) == len(b) == fingerprint_length(2) == 24
    assert a != b  # bf16 rounding does change the numbers ...
    assert fingerprints_match(a, b)  # ... but not beyond the tolerance
    fp16 = fingerprint_state_dict({k: v.half() for k, v in wan.items()}, "wan")
    assert fingerprints_match(fp16, b) and fingerprints_match(fp16, a)


def test_fingerprint_tolerance_covers_worst_case_bf16_rounding():
    # positive values that all lose ~0.39 % (just under half a bf16 ulp) when rounded to bf16: the
    # rounding errors add up instead of cancelling, the worst case the tolerance is built for.
    gen = torch.Generator().manual_seed(0)
    exponents = torch.randint(-10, -3, (2, DIM, DIM), generator=gen).float()
    values = (1 + 0.499 * 2.0**-7) * torch.pow(2.0, exponents)
    wan = {f"blocks.{i}.self_attn.{r}.weight": values[i] for i in range(2) for r in "qkvo"}
    bf16 = {k: v.to(torch.bfloat16) for k, v in wan.items()}
    assert float((bf16["blocks.0.self_attn.q.weight"].float() / values[0] - 1).mean()) < -3.8e-3
    assert fingerprints_match(fingerprint_state_dict(bf16, "wan"), fingerprint_state_dict(wan, "wan"))


def test_fingerprint_fp8_copy_matches_in_practice():
    wan = wan_state_dict(2, DIM, seed=3)
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in wan.items()}
    assert fingerprints_match(fingerprint_state_dict(fp8, "wan"), fingerprint_state_dict(wan, "wan"))


def test_fingerprint_different_weights_do_not_match():
    a = fingerprint_state_dict(wan_state_dict(2, DIM, seed=3), "wan")
    b = fingerprint_state_dict(wan_state_dict(2, DIM, seed=4), "wan")
    assert not fingerprints_match(a, b)
    # the same weights with one block taken from another checkpoint, transposed or negated
    wan, other = wan_state_dict(2, DIM, seed=3), wan_state_dict(2, DIM, seed=4)
    mixed = {k: other[k] if k.startswith("blocks.1.") else v for k, v in wan.items()}
    transposed = {k: v.t() if k.endswith("weight") and v.ndim == 2 else v for k, v in wan.items()}
    negated = {k: -v if k.startswith("blocks.0.") else v for k, v in wan.items()}
    for changed in (mixed, transposed, negated):
        assert not fingerprints_match(a, fingerprint_state_dict(changed, "wan"))
    assert not fingerprints_match(a, a[:12])  # different lengths
    assert not fingerprints_match(a, [float("nan")] * len(a))


class _Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.self_attn = _Attention(dim)


class _TinyWan(nn.Module):
    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(layers))


def test_fingerprint_of_module_matches_state_dict():
    torch.manual_seed(0)
    model = _TinyWan(DIM, 3)
    wrapper = nn.Module()
    wrapper.diffusion_model = model  # like a ComfyUI BaseModel
    expected = fingerprint_state_dict(model.state_dict(), "wan")
    assert fingerprint_module(model, "wan") == expected
    assert fingerprint_module(wrapper, "wan", prefix="diffusion_model.") == expected
    with pytest.raises(ValueError, match="no diffusers-layout self-attention"):
        fingerprint_module(model, "diffusers")


def test_fingerprint_errors_name_the_key():
    sd = wan_state_dict(2, 8, seed=0)
    del sd["blocks.1.self_attn.v.weight"]
    with pytest.raises(ValueError, match=r"'blocks\.1\.self_attn\.v\.weight' \(block 1 of 2\)"):
        self_attention_fingerprint(sd.__getitem__, 2, "wan")
    with pytest.raises(ValueError, match="not contiguous: missing \\[1\\]"):
        infer_num_layers(["blocks.0.self_attn.q.weight", "blocks.2.self_attn.q.weight"], "wan")


def test_sample_walks_through_every_column():
    idx = _sample_indices(torch.Size((1536, 1536)))  # Wan2.1-1.3B's q/k/v/o weight
    assert idx.numel() == FINGERPRINT_SAMPLES
    assert int(idx.max()) < 1536 * 1536
    assert len(set((idx % 1536).tolist())) == 1536


# ------------------------------------------------------------------------------------------------
# node-input file names
# ------------------------------------------------------------------------------------------------


def test_resolve_in_folder(tmp_path):
    folder = tmp_path / "rehyat"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(b"")
    (folder / "sub" / "b.safetensors").write_bytes(b"")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"")
    assert resolve_in_folder(folder, "a.safetensors") == folder / "a.safetensors"
    assert resolve_in_folder(folder, "sub/b.safetensors") == folder / "sub" / "b.safetensors"
    assert resolve_in_folder(folder, "sub\\b.safetensors") == folder / "sub" / "b.safetensors"
    assert resolve_in_folder(folder, "new.safetensors", must_exist=False) == folder / "new.safetensors"
    with pytest.raises(FileNotFoundError):
        resolve_in_folder(folder, "new.safetensors")

    for name in ("../secret.safetensors", "sub/../../secret.safetensors", "..\\secret.safetensors"):
        with pytest.raises(ValueError, match="'\\.\\.'"):
            resolve_in_folder(folder, name)
    for name in (str(outside), "/etc/x.safetensors", "C:\\x.safetensors", "\\\\server\\share\\x.safetensors"):
        with pytest.raises(ValueError, match="not absolute"):
            resolve_in_folder(folder, name)
    for name in ("a.ckpt", "a.pt", "a.safetensors.bak"):
        with pytest.raises(ValueError, match=r"must end in \.safetensors"):
            resolve_in_folder(folder, name)
    for name in ("", "  ", "a\x00.safetensors"):
        with pytest.raises(ValueError):
            resolve_in_folder(folder, name)
    (folder / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        resolve_in_folder(folder, "dir.safetensors")


def test_resolve_in_folder_follows_symlinks_like_comfyui_model_folders(tmp_path):
    # A link inside the folder is the folder owner's choice (e.g. models on another disk): followed,
    # as ComfyUI's folder_paths does. The node input itself can only name paths inside the folder.
    folder, disk = tmp_path / "rehyat", tmp_path / "big_disk"
    folder.mkdir()
    (disk / "sub").mkdir(parents=True)
    (disk / "phi.safetensors").write_bytes(b"x")
    (disk / "sub" / "deep.safetensors").write_bytes(b"y")
    (folder / "link.safetensors").symlink_to(disk / "phi.safetensors")
    (folder / "linked_dir").symlink_to(disk, target_is_directory=True)
    assert resolve_in_folder(folder, "link.safetensors").read_bytes() == b"x"
    assert resolve_in_folder(folder, "linked_dir/sub/deep.safetensors").read_bytes() == b"y"
    new = resolve_in_folder(folder, "linked_dir/new.safetensors", must_exist=False)
    assert new.parent == folder / "linked_dir"
    (folder / "dangling.safetensors").symlink_to(disk / "gone.safetensors")
    with pytest.raises(FileNotFoundError):
        resolve_in_folder(folder, "dangling.safetensors")


def test_check_relative_name_names_the_parameter():
    assert check_relative_name("a/b", "filename_prefix") == "a/b"
    with pytest.raises(ValueError, match="filename_prefix '../a' must not contain"):
        check_relative_name("../a", "filename_prefix")


# ------------------------------------------------------------------------------------------------
# training metadata, atomic writes through links, weight formats of real checkpoints
# ------------------------------------------------------------------------------------------------


def test_training_metadata_round_trips_and_is_optional(saved, tmp_path):
    path, hybrid = saved
    assert load_phi_weights(path).training is None
    assert load_phi_weights(path).rehyat_version == rehyat.__version__
    training = {"stage": "distill", "steps": 2000, "learning_rate": 1e-3, "prompts": ["a cat", "a dog"],
                "resumed_from": None, "nested": {"seed": 0, "ok": True}}
    other = save_phi_weights(tmp_path / "t.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT,
                             training=training)
    assert load_phi_weights(other).training == training
    with safetensors.safe_open(str(other), framework="pt") as handle:
        assert json.loads(handle.metadata()["training"]) == training


@pytest.mark.parametrize(("training", "pattern"), [
    (["not", "a", "mapping"], "training must be a mapping"),
    ({1: "x"}, "training keys must be strings"),
    ({"lr": float("nan")}, "JSON-serialisable"),
    ({"tensor": torch.zeros(1)}, "JSON-serialisable"),
])
def test_bad_training_metadata_is_refused_before_writing(tmp_path, training, pattern):
    with pytest.raises(ValueError, match=pattern):
        save_phi_weights(tmp_path / "t.safetensors", make_hybrid(0), CONFIG, BASE, BASE_FINGERPRINT,
                         training=training)
    assert os.listdir(tmp_path) == []


def test_training_metadata_must_be_an_object_when_present(saved, tmp_path):
    path, _ = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata_update={"training": "[1, 2]"})
    with pytest.raises(ValueError, match="training metadata must be a JSON object"):
        load_phi_weights(bad)


def test_atomic_save_writes_through_a_symlinked_file(tmp_path):
    target = tmp_path / "disk" / "phi.safetensors"
    target.parent.mkdir()
    link = tmp_path / "link.safetensors"
    atomic_save_file({"x": torch.zeros(2)}, {"v": "1"}, target)
    link.symlink_to(target)
    assert atomic_save_file({"x": torch.ones(2)}, {"v": "2"}, link) == target
    assert link.is_symlink() and torch.equal(safetensors.torch.load_file(link)["x"], torch.ones(2))
    assert sorted(p.name for p in target.parent.iterdir()) == ["phi.safetensors"]


def test_fingerprint_reads_scaled_fp8_weights_times_their_scale():
    wan = wan_state_dict(2, DIM, seed=3)
    scaled = {}
    for key, value in wan.items():
        scale = value.abs().max() / 448.0 * 16
        scaled[key] = (value / scale).to(torch.float8_e4m3fn)
        scaled[key.removesuffix("weight") + "scale_weight"] = scale.reshape(())
    reference = fingerprint_state_dict(wan, "wan")
    assert fingerprints_match(fingerprint_state_dict(scaled, "wan", num_layers=2), reference)
    bare = {k: v for k, v in scaled.items() if k.endswith(".weight")}
    assert not fingerprints_match(fingerprint_state_dict(bare, "wan"), reference)
    per_channel = dict(scaled, **{"blocks.0.self_attn.q.scale_weight": torch.ones(DIM, 1)})
    with pytest.raises(ValueError, match="per-channel weight scales"):
        fingerprint_state_dict(per_channel, "wan", num_layers=2)


class _Quantized(torch.Tensor):
    """A tensor subclass of int8 codes and a scale that dequantizes (like ComfyUI's QuantizedTensor)."""

    @staticmethod
    def __new__(cls, codes, scale):
        self = torch.Tensor._make_subclass(cls, codes)
        self.scale = scale
        return self

    def dequantize(self):
        return self.as_subclass(torch.Tensor).float() * self.scale


def test_fingerprint_dequantizes_tensor_subclasses_and_refuses_unknown_ones():
    value = seeded_tensor((DIM, DIM), 0) * 0.05
    scale = float(value.abs().max()) / 127
    quantized = _Quantized(torch.round(value / scale).to(torch.int8), scale)
    stats = tensor_statistics(quantized)
    assert stats == pytest.approx(tensor_statistics(value), rel=1e-2, abs=1e-4)

    class Opaque(torch.Tensor):
        pass

    with pytest.raises(ValueError, match="cannot read the values of a Opaque"):
        tensor_statistics(value.as_subclass(Opaque))


def test_fingerprint_module_reads_opaque_weights_through_the_weight_reader():
    from rehyat.weights import needs_layer_to_read

    class Opaque(torch.Tensor):  # storage only its layer can read (no dequantize())
        pass

    assert needs_layer_to_read(torch.zeros(1).as_subclass(Opaque))
    assert not needs_layer_to_read(torch.zeros(1)) and not needs_layer_to_read(nn.Parameter(torch.zeros(1)))
    assert not needs_layer_to_read(_Quantized(torch.zeros(1, dtype=torch.int8), 1.0))  # dequantizes itself
    torch.manual_seed(0)
    model = _TinyWan(DIM, 2)
    expected = fingerprint_module(model, "wan")
    values = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            values[name] = module.weight.detach().clone()
            module.weight = nn.Parameter(torch.zeros(3).as_subclass(Opaque), requires_grad=False)
    calls = []

    def reader(layer, attribute, stored):
        calls.append(attribute)
        assert type(stored) is Opaque
        return values[next(n for n, m in model.named_modules() if m is layer)]

    assert fingerprint_module(model, "wan", num_layers=2, weight_reader=reader) == expected
    assert len(calls) == 8 and set(calls) == {"weight"}  # q, k, v, o of both blocks
    with pytest.raises(ValueError, match="cannot fingerprint 'blocks.0.self_attn.q.weight'.*Opaque"):
        fingerprint_module(model, "wan", num_layers=2)


def test_fingerprint_module_reads_unpatched_originals():
    torch.manual_seed(0)
    model = _TinyWan(DIM, 2)
    expected = fingerprint_module(model, "wan")
    original = model.blocks[0].self_attn.q.weight.detach().clone()
    with torch.no_grad():
        model.blocks[0].self_attn.q.weight.add_(1.0)  # a weight patch applied in place
    assert not fingerprints_match(fingerprint_module(model, "wan"), expected)
    originals = {"blocks.0.self_attn.q.weight": original}
    assert fingerprint_module(model, "wan", originals=originals) == expected


def seeded_tensor(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_tensor_statistics_reads_weights_made_under_inference_mode():
    from rehyat.weights.fingerprint import tensor_statistics

    with torch.inference_mode():
        weight = torch.randn(48, 32).t()  # a view: viewing it again outside inference mode used to fail
    plain = weight.clone()
    assert tensor_statistics(weight) == tensor_statistics(plain)


# ------------------------------------------------------------------------------------------------
# non-finite φ, self-contradicting and hostile metadata
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_phi_are_refused_at_save_naming_the_tensor(tmp_path, bad):
    hybrid = make_hybrid(0)
    with torch.no_grad():
        hybrid[3].feature_maps.phi_k.weight2[0, 1, 2] = bad
    with pytest.raises(ValueError, match=r"blocks\.3\.phi_k\.weight2.*(NaN|inf)"):
        save_phi_weights(tmp_path / "phi.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_phi_are_refused_at_load_naming_file_and_tensor(saved, tmp_path, bad):
    path, _ = saved
    with safetensors.safe_open(str(path), framework="pt") as handle:
        tensor = handle.get_tensor("blocks.2.phi_q.bias1").clone()
    tensor.view(-1)[3] = bad
    broken = rewrite(path, tmp_path / "bad.safetensors", replace={"blocks.2.phi_q.bias1": tensor})
    with pytest.raises(ValueError, match=r"bad\.safetensors.*blocks\.2\.phi_q\.bias1.*(NaN|inf)"):
        load_phi_weights(broken)


@pytest.mark.parametrize("field", ["chunk_frames", "overlap_frames", "causal"])
def test_phi_metadata_contradicting_its_training_conversion_record_is_refused(saved, tmp_path, field):
    path, hybrid = saved
    record = CONFIG.to_dict()
    value = record["attention"][field]
    record["attention"][field] = (not value) if isinstance(value, bool) else value + 1
    training = {"stage": "distill", "conversion": record}
    with pytest.raises(ValueError, match=rf"training.*conversion.*{field}"):
        save_phi_weights(tmp_path / "t.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT,
                         training=training)
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata_update={"training": json.dumps(training)})
    with pytest.raises(ValueError, match=rf"bad\.safetensors.*{field}"):
        load_phi_weights(bad)
    agreeing = {"stage": "distill", "conversion": CONFIG.to_dict()}
    good = save_phi_weights(tmp_path / "good.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT,
                            training=agreeing)
    assert load_phi_weights(good).training == agreeing


@pytest.mark.parametrize("field", ["training", "conversion_config"])
def test_deeply_nested_metadata_gets_one_line_not_a_recursion_error(saved, tmp_path, field):
    path, hybrid = saved
    deep = "[" * 100_000 + "]" * 100_000
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata_update={field: deep})
    with pytest.raises(ValueError, match=rf"bad\.safetensors.*{field}.*nested too deeply"):
        load_phi_weights(bad)
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ValueError, match="training.*nested too deeply"):
        save_phi_weights(tmp_path / "t.safetensors", hybrid, CONFIG, BASE, BASE_FINGERPRINT,
                         training={"x": nested})
