"""Each φ / patch / compare / conditioning node has a help page naming all its inputs and outputs."""

from __future__ import annotations

import pytest
from comfy_support import requires_comfyui
from nodes_support import ROOT, node_class, pack_module

pytestmark = requires_comfyui
NODE_IDS = ("ReHyAtPatchModel", "ReHyAtPatchWan", "ReHyAtLoadPhi", "ReHyAtSavePhi", "ReHyAtLoadPhiFromHub",
            "ReHyAtCompare", "ReHyAtSaveConditioning", "ReHyAtLoadConditioning", "ReHyAtChunkedSampler",
            "ReHyAtExtendClip", "ReHyAtPromptSchedule")


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_help_page_names_every_input_and_output(node_id):
    page = ROOT / "web" / "docs" / f"{node_id}.md"
    assert page.is_file(), f"missing help page {page}"
    text = page.read_text(encoding="utf-8")
    schema = node_class(node_id).define_schema()
    assert text.startswith(f"# {schema.display_name.split(' (')[0]}")
    for item in schema.inputs:
        assert f"**{item.id}**" in text, (node_id, item.id)
    for output in schema.outputs:
        name = output.display_name or output.io_type
        assert f"**{name}**" in text, (node_id, name)


def _all_schemas():
    nodes = pack_module("nodes")
    return [cls.define_schema() for cls in nodes.node_classes()]


def test_every_node_is_described_categorised_and_has_a_tooltip_on_every_input():
    schemas = _all_schemas()
    ids = {schema.node_id for schema in schemas}
    assert {"ReHyAtChunkedSampler", "ReHyAtStreamingSampler", "ReHyAtDistill", "ReHyAtFinetune",
            "ReHyAtMakeDataset", "ReHyAtProfile", *NODE_IDS} <= ids
    allowed = {"ReHyAt/model", "ReHyAt/sampling", "ReHyAt/training", "ReHyAt/analysis"}
    for schema in schemas:
        assert schema.category in allowed, (schema.node_id, schema.category)
        assert schema.description and len(schema.description) > 20, schema.node_id
        assert (ROOT / "web" / "docs" / f"{schema.node_id}.md").is_file(), schema.node_id
        for item in schema.inputs:
            assert getattr(item, "tooltip", None), (schema.node_id, item.id)
