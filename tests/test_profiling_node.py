"""Node ReHyAtProfile in a real ComfyUI: a preset or the connected model, plot as IMAGE, table as STRING."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_support import load_tiny_wan_comfy, requires_comfyui, tiny_wan_state_dict
from nodes_support import node_class, run_node

pytestmark = requires_comfyui
WIDGETS = dict(preset="wan2.1-1.3b", width=832, height=480, length=81, lengths="81,161", chunk_frames=3,
               overlap_frames=1, num_blocks=1000, causal=True, forward_mode="parallel", uniform_rates="2,4,8",
               context_windows=True, context_length=81, context_overlap=16, accounting="incremental",
               measure=False, repeats=1)


def test_schema_has_tooltips_description_and_category():
    schema = node_class("ReHyAtProfile").define_schema()
    assert schema.category == "ReHyAt/analysis" and len(schema.description) > 40
    assert all(i.tooltip for i in schema.inputs), [i.id for i in schema.inputs if not i.tooltip]
    assert [o.io_type for o in schema.outputs] == ["IMAGE", "STRING", "STRING"]
    assert next(i for i in schema.inputs if i.id == "model").optional


def test_preset_profile_returns_plot_table_and_json():
    image, table, text = run_node("ReHyAtProfile", **WIDGETS)
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3 and image.dtype == torch.float32
    assert "wan2.1-1.3b" in table and "480x832" in table and "context windows 21/4" in table
    report = json.loads(text)
    assert report["rehyat"]["config"]["converted_blocks"] == 30
    assert [r["video_frames"] for r in report["lengths"]] == [81, 161]
    assert report["rehyat"]["model_tflops"] < report["softmax"]["model_tflops"]


def test_connected_model_is_measured():
    model = load_tiny_wan_comfy(tiny_wan_state_dict(num_layers=2, seed=0))
    widgets = {**WIDGETS, "width": 32, "height": 32, "length": 9, "lengths": "9", "chunk_frames": 2,
               "context_length": 5, "context_overlap": 4, "uniform_rates": "2", "measure": True,
               "forward_mode": "recurrent"}
    image, table, text = run_node("ReHyAtProfile", model=model, **widgets)
    report = json.loads(text)
    assert report["model"]["dim"] == 256 and report["model"]["num_layers"] == 2
    for row in report["lengths"]:
        for key in ("softmax", "rehyat", "context_windows"):
            assert row["cases"][key]["measured"]["step_seconds"] > 0
    assert "MiB" in table and image.shape[0] == 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"lengths": "81,abc"}, "lengths must be comma-separated integers"),
    ({"uniform_rates": "0"}, "uniform_rates must be comma-separated integers ≥ 1"),
    ({"measure": True}, "measure needs a connected model"),
    ({"causal": False, "forward_mode": "recurrent"}, "needs causal=True"),
])
def test_bad_inputs_are_refused_naming_the_input(changes, message):
    with pytest.raises(ValueError, match=message):
        run_node("ReHyAtProfile", **{**WIDGETS, **changes})
