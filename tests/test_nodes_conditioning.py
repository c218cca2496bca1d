"""Save / Load Conditioning nodes in real ComfyUI: files in output/rehyat_conditioning, ComfyUI's own
CLIP-vision output type restored, sampling from a loaded conditioning equal to sampling from the original."""

from __future__ import annotations

import pytest
import torch
from comfy_support import (
    WAN_TEXT_DIM,
    import_comfyui,
    load_tiny_wan_comfy,
    requires_comfyui,
    tiny_wan_state_dict,
)
from nodes_support import node_class, pack_folders_fixture, run_node, seeded  # noqa: F401

pytestmark = requires_comfyui


def clip_vision_output():
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output["last_hidden_state"] = seeded((1, 5, 32), 3)
    output["penultimate_hidden_states"] = seeded((1, 5, 32), 4)
    output["image_embeds"] = seeded((1, 32), 5)
    output["mm_projected"] = None
    return output


def test_schemas():
    for node_id in ("ReHyAtSaveConditioning", "ReHyAtLoadConditioning"):
        schema = node_class(node_id).define_schema()
        assert schema.category == "ReHyAt/model" and len(schema.description) > 40
        assert all(i.tooltip for i in schema.inputs)
    assert node_class("ReHyAtSaveConditioning").define_schema().is_output_node


def test_round_trip_restores_comfyui_types(pack_folders):
    import comfy.clip_vision

    cond = seeded((1, 8, WAN_TEXT_DIM), 1)
    positive = [[cond, {"pooled_output": None, "clip_vision_output": clip_vision_output(), "guidance": 5.0}]]
    (name,) = run_node("ReHyAtSaveConditioning", conditioning=positive,
                       filename_prefix="rehyat_test_positive")
    assert name == "rehyat_test_positive_00001_.safetensors"
    assert (pack_folders.conditioning / name).is_file()
    assert name in node_class("ReHyAtLoadConditioning").define_schema().inputs[0].options
    (loaded,) = run_node("ReHyAtLoadConditioning", conditioning_file=name)
    assert isinstance(loaded, list) and isinstance(loaded[0], list)
    assert torch.equal(loaded[0][0], cond)
    extras = loaded[0][1]
    assert extras["pooled_output"] is None and extras["guidance"] == 5.0
    restored = extras["clip_vision_output"]
    assert type(restored) is comfy.clip_vision.Output
    assert torch.equal(restored.image_embeds, positive[0][1]["clip_vision_output"].image_embeds)
    assert restored.mm_projected is None


def test_sampling_from_a_loaded_conditioning_matches_the_original(pack_folders):
    import_comfyui()
    import comfy.sample

    model = load_tiny_wan_comfy(tiny_wan_state_dict(seed=0))
    positive = [[seeded((1, 8, WAN_TEXT_DIM), 1), {"pooled_output": None}]]
    negative = [[seeded((1, 8, WAN_TEXT_DIM), 2), {"pooled_output": None}]]
    names = [run_node("ReHyAtSaveConditioning", conditioning=c, filename_prefix=f"sub/{p}")[0]
             for c, p in ((positive, "pos"), (negative, "neg"))]
    assert names == ["sub/pos_00001_.safetensors", "sub/neg_00001_.safetensors"]
    loaded = [run_node("ReHyAtLoadConditioning", conditioning_file=n)[0] for n in names]
    latent = torch.zeros(1, 16, 3, 8, 8)
    noise = seeded((1, 16, 3, 8, 8), 7)

    def sample(pos, neg):
        return comfy.sample.sample(model, noise, 2, 3.0, "euler", "simple", pos, neg, latent,
                                   disable_pbar=True, seed=0)

    reference = sample(positive, negative)
    assert torch.isfinite(reference).all()
    assert torch.equal(sample(*loaded), reference)


def test_refuses_extras_it_cannot_store_and_escaping_names(pack_folders):
    conditioning = [[seeded((1, 4, 16), 1), {"control": object()}]]
    with pytest.raises(ValueError, match="conditioning: conditioning entry 0, extra 'control'"):
        run_node("ReHyAtSaveConditioning", conditioning=conditioning, filename_prefix="x")
    good = [[seeded((1, 4, 16), 1), {}]]
    for prefix in ("../x", "/abs/x", ""):
        with pytest.raises(ValueError, match="filename_prefix"):
            run_node("ReHyAtSaveConditioning", conditioning=good, filename_prefix=prefix)
    with pytest.raises(ValueError, match="conditioning_file"):
        run_node("ReHyAtLoadConditioning", conditioning_file="../escape.safetensors")
    with pytest.raises(ValueError, match="not found"):
        run_node("ReHyAtLoadConditioning", conditioning_file="missing.safetensors")
    assert list(pack_folders.conditioning.rglob("*")) == []
