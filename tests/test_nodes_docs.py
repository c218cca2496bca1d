"""Each φ / patch / compare / conditioning node has a help page naming all its inputs and outputs."""

from __future__ import annotations

import pytest
from comfy_support import requires_comfyui
from nodes_support import ROOT, node_class

pytestmark = requires_comfyui
NODE_IDS = ("ReHyAtPatchModel", "ReHyAtPatchWan", "ReHyAtLoadPhi", "ReHyAtSavePhi", "ReHyAtLoadPhiFromHub",
            "ReHyAtCompare", "ReHyAtSaveConditioning", "ReHyAtLoadConditioning")


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
