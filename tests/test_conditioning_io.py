"""rehyat.conditioning_io: CONDITIONING ⇄ safetensors (the core; nodes: test_nodes_conditioning.py)."""

from __future__ import annotations

import json
import os

import pytest
import safetensors
import safetensors.torch
import torch

from rehyat.conditioning_io import (
    FORMAT,
    ConditioningObject,
    load_conditioning,
    save_conditioning,
)


def seeded(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


class FakeClipVisionOutputClass:
    """Stands for an object whose class is not allowed (not comfy.clip_vision.Output)."""

    def __init__(self):
        self.image_embeds = torch.zeros(1, 4)


def rich_conditioning():
    shared = seeded((1, 3, 8), 9)
    clip_vision = ConditioningObject("comfy.clip_vision.Output", {
        "last_hidden_state": seeded((1, 5, 8), 3), "penultimate_hidden_states": seeded((1, 5, 8), 4),
        "image_embeds": seeded((1, 8), 5), "mm_projected": None})
    return [
        [seeded((2, 7, 16), 1, torch.bfloat16), {
            "pooled_output": None, "guidance": 3.5, "start_percent": 0.0, "strength": 1,
            "set_area_to_bounds": False, "name": "positive", "clip_vision_output": clip_vision,
            "concat_latent_image": shared, "concat_mask": shared,
            "reference_latents": [seeded((1, 4, 2, 2), 6), seeded((1, 4, 2, 2), 7)],
            "area": (16, 16, 0, 0), "nested": {"a": [1, 2.5, "x"], "t": seeded((2,), 8)},
        }],
        [seeded((2, 4, 16), 2, torch.float16), {"pooled_output": seeded((2, 16), 10)}],
    ]


def assert_same(a, b):
    """Deep equality with tensors compared exactly (value, dtype, shape) and types kept."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, ConditioningObject):
        assert isinstance(b, ConditioningObject) and a.class_name == b.class_name
        assert_same(a.attributes(), b.attributes())
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_round_trip_keeps_every_value_dtype_and_container(tmp_path):
    conditioning = rich_conditioning()
    path = save_conditioning(tmp_path / "c.safetensors", conditioning)
    loaded = load_conditioning(path)
    assert len(loaded) == 2 and all(isinstance(entry, tuple) for entry in loaded)
    for (cond, extras), (ref_cond, ref_extras) in zip(loaded, conditioning, strict=True):
        assert_same(cond, ref_cond)
        assert_same(extras, ref_extras)
    clip = loaded[0][1]["clip_vision_output"]
    assert clip["image_embeds"] is clip.image_embeds  # item and attribute access, like ComfyUI's Output
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_shared_tensors_are_stored_once_and_the_layout_is_documented(tmp_path):
    path = save_conditioning(tmp_path / "c.safetensors", rich_conditioning())
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())
    assert metadata["format"] == FORMAT and metadata["format_version"] == "1"
    structure = json.loads(metadata["structure"])
    extras = structure[0]["extras"]
    assert extras["concat_latent_image"] == extras["concat_mask"]  # one tensor, two keys
    assert extras["guidance"] == {"value": 3.5} and extras["area"]["tuple"] is True
    assert len(keys) == 10  # 2 conds, the shared one, 3 clip-vision, 2 references, nested, pooled


@pytest.mark.parametrize(("conditioning", "pattern"), [
    ([], "non-empty list"),
    ("text", "non-empty list"),
    ([[torch.zeros(1, 2)]], "entry 0 must be a \\[cond tensor, extras dict\\] pair"),
    ([[torch.zeros(2, 3), {}]], "entry 0: cond must be a tensor \\(B, L, C\\); got \\(2, 3\\)"),
    ([[torch.zeros(1, 2, 3), []]], "extras must be a dict"),
    ([[torch.zeros(1, 2, 3), {"control": object()}]], "extra 'control' is a builtins.object"),
    ([[torch.zeros(1, 2, 3), {"hooks": FakeClipVisionOutputClass()}]], "cannot be saved"),
    ([[torch.zeros(1, 2, 3), {"guidance": float("nan")}]], "non-finite number"),
    ([[torch.zeros(1, 2, 3), {"x": {1: torch.zeros(1)}}]], "dict keys must be strings"),
    ([[torch.zeros(1, 2, 3), {1: 2}]], "extra keys must be strings"),
])
def test_refuses_what_it_cannot_round_trip_and_writes_nothing(tmp_path, conditioning, pattern):
    with pytest.raises(ValueError, match=pattern):
        save_conditioning(tmp_path / "c.safetensors", conditioning)
    assert os.listdir(tmp_path) == []


def test_refusal_names_the_entry_and_says_what_to_do(tmp_path):
    with pytest.raises(ValueError) as info:
        save_conditioning(tmp_path / "c.safetensors",
                          [[torch.zeros(1, 2, 3), {}], [torch.zeros(1, 2, 3), {"control": object()}]])
    message = str(info.value)
    assert "conditioning entry 1, extra 'control'" in message and "save the conditioning before" in message


def test_name_and_file_checks(tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_conditioning(tmp_path / "c.pt", [[torch.zeros(1, 2, 3), {}]])
    with pytest.raises(FileNotFoundError):
        load_conditioning(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, other, metadata={"format": "rehyat-phi"})
    with pytest.raises(ValueError, match="not a ReHyAt conditioning file \\(format='rehyat-phi'"):
        load_conditioning(other)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_conditioning(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(("metadata", "pattern"), [
    ({"format_version": "2"}, "format_version '2'"),
    ({"structure": "{"}, "not valid JSON"),
    ({"structure": "[]"}, "non-empty list"),
    ({"structure": '[{"cond": "t9", "extras": {}}]'}, "tensor 't9' is missing"),
    ({"structure": '[{"cond": "t0", "extras": {"x": {"object": "os.system", "attrs": {}}}}]'},
     "unknown object class 'os.system'"),
    ({"structure": '[{"cond": "t0"}]'}, "entry 0 is malformed"),
])
def test_damaged_files_are_refused(tmp_path, metadata, pattern):
    good = save_conditioning(tmp_path / "c.safetensors", [[torch.zeros(1, 2, 3), {}]])
    tensors = safetensors.torch.load_file(good)
    with safetensors.safe_open(str(good), framework="pt") as handle:
        merged = {**handle.metadata(), **metadata}
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(tensors, bad, metadata=merged)
    with pytest.raises(ValueError, match=pattern):
        load_conditioning(bad)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_conditioning(tmp_path / "c.safetensors", [[torch.zeros(1, 2, 3), {}]])
    before = path.read_bytes()

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError):
        save_conditioning(path, [[torch.ones(1, 2, 3), {}]])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.safetensors"]


def rewritten(tmp_path, tensors=None, structure=None):
    """A valid one-entry conditioning file with its tensors and/or structure replaced."""
    good = save_conditioning(tmp_path / "good.safetensors",
                             [[torch.zeros(1, 2, 3), {"mask": torch.ones(1, 2)}]])
    with safetensors.safe_open(str(good), framework="pt") as handle:
        metadata = dict(handle.metadata())
        stored = {key: handle.get_tensor(key) for key in handle.keys()}
    entry = json.loads(metadata["structure"])[0]
    names = {"cond": entry["cond"], "mask": entry["extras"]["mask"]["tensor"]}
    stored.update({names[role]: tensor for role, tensor in (tensors or {}).items()})
    if structure is not None:
        metadata["structure"] = structure if isinstance(structure, str) else json.dumps(structure)
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(stored, bad, metadata=metadata)
    return bad


@pytest.mark.parametrize(("tensors", "pattern"), [
    ({"cond": torch.tensor([[[0.0, float("nan"), 1.0]]])}, r"bad\.safetensors.*entry 0, cond.*NaN"),
    ({"mask": torch.tensor([[1.0, float("inf")]])}, r"bad\.safetensors.*entry 0, extra 'mask'.*inf"),
    ({"cond": torch.zeros(2, 3)}, r"bad\.safetensors.*entry 0, cond.*\(B, L, C\).*\(2, 3\)"),
    ({"cond": torch.zeros(1, 2, 3, dtype=torch.int32)}, r"bad\.safetensors.*entry 0, cond.*floating.*int32"),
])
def test_non_finite_wrong_rank_or_dtype_tensors_are_refused_naming_file_and_key(tmp_path, tensors, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_conditioning(rewritten(tmp_path, tensors=tensors))


@pytest.mark.parametrize("structure", [
    [{"cond": ["t0"], "extras": {}}],
    [{"cond": "t0", "extras": {"x": {"list": 5}}}],
    [{"cond": "t0", "extras": {"x": {"dict": [1, 2]}}}],
    [{"cond": "t0", "extras": {"x": {"object": "comfy.clip_vision.Output", "attrs": 3}}}],
    [{"cond": "t0", "extras": {"x": {"list": [{"value": 1}], "tuple": "yes", "more": 1}}}],
    "deeply nested",
])
def test_malformed_structure_gets_one_line_naming_the_file(tmp_path, structure):
    if structure == "deeply nested":
        structure = "[" * 50_000 + "]" * 50_000
    pattern = r"conditioning file .*bad\.safetensors.*(malformed|nested too deeply)"
    with pytest.raises(ValueError, match=pattern):
        load_conditioning(rewritten(tmp_path, structure=structure))


def test_deeply_nested_extras_are_refused_at_save(tmp_path):
    nested: list = []
    for _ in range(50_000):
        nested = [nested]
    with pytest.raises(ValueError, match=r"conditioning entry 0, extra 'deep'.*nested too deeply"):
        save_conditioning(tmp_path / "c.safetensors", [[torch.zeros(1, 2, 3), {"deep": nested}]])
    assert os.listdir(tmp_path) == []
