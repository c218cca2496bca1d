"""Write ``workflows/distill_phi.json``: a UI-format workflow that distils φ of the harness's tiny Wan.

Run from the repository root (needs the provisioned ComfyUI): ``python tests/scripts/distill_workflow.py``.
Widget lists come from the pack's real node schemas, so the file stays in step with the nodes. Names
follow the workflow harness (tests/comfy_server.py): rehyat_test_wan.safetensors and the saved
conditioning files rehyat_test_positive / rehyat_test_negative; everything written starts with
``rehyat_test_`` (run folder output/rehyat_runs/rehyat_test_distill, φ file
models/rehyat/rehyat_test_distilled_00001_.safetensors, loss-curve image in output/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from nodes_support import node_class  # noqa: E402
from workflow_api import widget_specs  # noqa: E402

DISTILL_WIDGETS = {  # tiny and fast on CPU; the paper's settings are the node's defaults
    "prompts": "",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "length": 17,
    "steps": 2,
    "cfg": 3.0,
    "sampler_name": "euler_ancestral",
    "scheduler": "simple",
    "capture_stride": 1,
    "seed": 0,
    "iterations": 4,
    "learning_rate": 0.01,
    "holdout_prompts": 0,
    "num_blocks": 2,
    "placement": "last",
    "chunk_frames": 2,
    "overlap_frames": 1,
    "causal": True,
    "phi_hidden_dim": 32,
    "phi_feature_dim": 32,
    "run_name": "rehyat_test_distill",
    "checkpoint_every": 2,
    "query_chunk_fraction": 1.0,
}


class Builder:
    """Collects nodes and links in the frontend's UI format."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(
        self,
        node_type: str,
        title: str,
        pos: tuple[int, int],
        widgets: dict,
        *,
        builtin: dict | None = None,
        outputs: list[tuple[str, str]] | None = None,
    ) -> dict:
        if builtin is None:
            definition = {"input": node_class(node_type).INPUT_TYPES()}
            schema = node_class(node_type).define_schema()
            outputs = [(o.display_name or o.io_type, o.io_type) for o in schema.outputs]
        else:
            definition, outputs = builtin, outputs or []
        specs = widget_specs(definition)
        values = [widgets[s.name] for s in specs]
        sockets = []
        for section in ("required", "optional"):
            for name, spec in definition["input"].get(section, {}).items():
                kind = spec[0] if not isinstance(spec[0], list) else "COMBO"
                is_widget = any(s.name == name for s in specs)
                entry = {"name": name, "localized_name": name, "type": kind, "link": None}
                if is_widget:
                    entry["widget"] = {"name": name}
                sockets.append(entry)
        node = {
            "id": len(self.nodes) + 1,
            "type": node_type,
            "title": title,
            "pos": list(pos),
            "size": [340, 120],
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": sockets,
            "outputs": [{"name": n, "localized_name": n, "type": t, "links": []} for n, t in outputs],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": values,
        }
        self.nodes.append(node)
        return node

    def link(self, source: dict, slot: int, target: dict, name: str) -> None:
        link_id = len(self.links) + 1
        index = next(i for i, s in enumerate(target["inputs"]) if s["name"] == name)
        kind = source["outputs"][slot]["type"]
        self.links.append([link_id, source["id"], slot, target["id"], index, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][index]["link"] = link_id

    def workflow(self) -> dict:
        return {
            "id": "00000000-0000-0000-0000-00000000d157",
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
            "version": 0.4,
        }


def build() -> dict:
    b = Builder()
    unet = b.node(
        "UNETLoader",
        "Load Diffusion Model (original Wan2.1)",
        (0, 0),
        {"unet_name": "rehyat_test_wan.safetensors", "weight_dtype": "default"},
        builtin={
            "input": {
                "required": {"unet_name": [["rehyat_test_wan.safetensors"]], "weight_dtype": [["default"]]}
            }
        },
        outputs=[("MODEL", "MODEL")],
    )
    positive = b.node(
        "ReHyAtLoadConditioning",
        "Training prompt (saved conditioning)",
        (0, 160),
        {"conditioning_file": "rehyat_test_positive.safetensors"},
    )
    negative = b.node(
        "ReHyAtLoadConditioning",
        "Negative prompt (saved conditioning)",
        (0, 300),
        {"conditioning_file": "rehyat_test_negative.safetensors"},
    )
    distill = b.node(
        "ReHyAtDistill",
        "Distill φ (run folder output/rehyat_runs/rehyat_test_distill)",
        (400, 0),
        DISTILL_WIDGETS,
    )
    patch = b.node(
        "ReHyAtPatchModel",
        "Patch with the distilled φ",
        (800, 0),
        {
            "num_blocks": 2,
            "placement": "last",
            "chunk_frames": 2,
            "overlap_frames": 1,
            "causal": True,
            "forward_mode": "parallel",
        },
    )
    save = b.node(
        "ReHyAtSavePhi",
        "Save φ (models/rehyat/rehyat_test_distilled_00001_.safetensors)",
        (1200, 0),
        {"filename_prefix": "rehyat_test_distilled"},
    )
    image = b.node(
        "SaveImage",
        "Loss curve",
        (800, 300),
        {"filename_prefix": "rehyat_test_distill_loss"},
        builtin={"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}},
    )
    report = b.node(
        "PreviewAny",
        "Held-out report",
        (1200, 300),
        {},
        builtin={"input": {"required": {"source": ["*", {}]}}},
    )
    b.link(unet, 0, distill, "model")
    b.link(positive, 0, distill, "positive")
    b.link(negative, 0, distill, "negative")
    b.link(unet, 0, patch, "model")
    b.link(distill, 0, patch, "phi")
    b.link(patch, 0, save, "model")
    b.link(distill, 1, image, "images")
    b.link(distill, 2, report, "source")
    return b.workflow()


if __name__ == "__main__":
    path = ROOT / "workflows" / "distill_phi.json"
    path.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(path)
