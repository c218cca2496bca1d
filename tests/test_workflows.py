"""Every workflows/*.json: valid for the frontend and the real server, and runs end to end.

A real ComfyUI server (tests/comfy_server.py) loads this pack and the tiny models tree
(tests/server_models.py); each UI-format workflow is checked against the server's ``/object_info``,
converted to the API format (tests/workflow_api.py) and run through ``POST /prompt``; its outputs are
checked. ComfyUI must also list the workflows as the pack's templates.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from comfy_server import ComfyServer, PromptResult, comfy_server_fixture  # noqa: F401  (fixture comfy_server)
from comfy_support import REPO_ROOT
from PIL import Image
from server_models import NAMES, PACK_DIR_NAME, TINY_WAN_LAYERS
from workflow_api import FRONTEND_ONLY, WorkflowError, check_ui_structure, to_api, validate_widgets

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
IMAGE_OUTPUT_KEYS = ("images", "animated", "gifs", "videos")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


workflow_files = pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])


def test_repo_ships_workflows():
    assert WORKFLOWS, "workflows/ holds no *.json workflow"


@workflow_files
def test_workflow_is_ui_format(path: Path):
    workflow = load(path)
    assert check_ui_structure(workflow) == []
    assert any(node["type"].startswith("ReHyAt") for node in workflow["nodes"]), "uses no ReHyAt node"


@workflow_files
def test_node_types_exist_on_server(path: Path, comfy_server: ComfyServer):
    known = comfy_server.object_info()
    types = {node["type"] for node in load(path)["nodes"]} - FRONTEND_ONLY
    assert sorted(t for t in types if t not in known) == []


@workflow_files
def test_widget_values_valid(path: Path, comfy_server: ComfyServer):
    assert validate_widgets(load(path), comfy_server.object_info()) == []


def _snapshot(folder: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _images(result: PromptResult) -> list[dict]:
    return [image for output in result.outputs.values() for key in IMAGE_OUTPUT_KEYS
            for image in output.get(key, []) if isinstance(image, dict) and "filename" in image]


def _texts(result: PromptResult) -> list[str]:
    return [str(t) for output in result.outputs.values() for t in output.get("text", [])]


def _check_compare(server: ComfyServer, api: dict, result: PromptResult, new: set[Path]) -> None:
    text = "\n".join(_texts(result))
    assert "PSNR" in text and "SSIM" in text, f"ReHyAtCompare report missing: {text!r}"
    sizes = {Image.open(server.output_file(i)).size for i in _images(result)}
    assert any(w > h for w, h in sizes), f"no side-by-side (wider than tall) image among {sizes}"


def _check_long_clip(server: ComfyServer, api: dict, result: PromptResult, new: set[Path]) -> None:
    progress = result.events_of("rehyat.chunk_progress")
    assert progress, "the chunked sampler sent no rehyat.chunk_progress event"
    (chunks,) = {event["chunks"] for event in progress}
    (steps,) = {event["steps"] for event in progress}
    sampler = next(k for k, v in api.items() if v["class_type"] == "ReHyAtChunkedSampler")
    assert {e["node"] for e in progress} == {sampler}
    assert chunks > 1, f"expected several chunks, got {progress[:3]}"
    assert {e["chunk"] for e in progress} == set(range(1, chunks + 1))
    assert {(e["chunk"], e["step"]) for e in progress} >= {(c, steps) for c in range(1, chunks + 1)}
    frames = [p for p in new if p.parent.name == "ReHyAt" and p.name.startswith("chunk_")]
    latent = next(v for v in api.values() if v["class_type"] == "EmptyHunyuanLatentVideo")["inputs"]
    assert len(frames) == latent["length"], "progressive decode did not write every frame as its chunk landed"


def _check_hub(server: ComfyServer, api: dict, result: PromptResult, new: set[Path]) -> None:
    fetched = [p for p in new if p.name == NAMES.hub_filename]
    assert fetched and all(p.is_relative_to(server.base_dir / "models" / "rehyat") for p in fetched), (
        f"the Hub φ was not placed in models/rehyat: {sorted(new)}")
    assert any(NAMES.hub_repo_id in text for text in _texts(result)), _texts(result)


def _check_distill(server: ComfyServer, api: dict, result: PromptResult, new: set[Path]) -> None:
    from rehyat.weights import load_phi_weights

    phi_files = [p for p in new if p.suffix == ".safetensors"
                 and p.is_relative_to(server.base_dir / "models" / "rehyat")]
    assert phi_files, f"distillation saved no φ into models/rehyat: {sorted(new)}"
    for path in phi_files:
        phi = load_phi_weights(path)  # a valid φ file (format, shapes, metadata) …
        assert phi.base.num_layers == TINY_WAN_LAYERS and phi.blocks  # … for the harness's tiny Wan


def _check_extend(server: ComfyServer, api: dict, result: PromptResult, new: set[Path]) -> None:
    from rehyat.streaming import load_resume
    from rehyat.video import read_mp4_frames

    states = [p for p in new if p.parent.name == "rehyat_states"]
    assert len(states) == 1, f"expected one resume file in output/rehyat_states: {sorted(new)}"
    _, settings = load_resume(states[0])
    assert settings.frames == 6 and settings.noise == "per_frame"  # length 21 → 6 latent frames, 2 chunks
    growing = [p for p in new if p.name.startswith("first_part_") and p.suffix == ".mp4"]
    assert len(growing) == 1 and read_mp4_frames(growing[0]).shape[0] == 21, sorted(new)
    whole = [p for p in new if p.name.startswith("extended_clip") and p.suffix == ".mp4"]
    assert len(whole) == 1, sorted(new)
    assert read_mp4_frames(whole[0]).shape[0] == 4 * (6 + 3 - 1) + 1  # the clip and its extension: 33


VIDEO_SUFFIXES = {".mp4", ".webm", ".mov"}
EXTRA_CHECKS: dict[str, Callable[[ComfyServer, dict, PromptResult, set[Path]], None]] = {
    "wan_vs_rehyat_compare": _check_compare,
    "long_clip_chunked": _check_long_clip,
    "wan22_a14b_long_clip": _check_long_clip,
    "extend_clip": _check_extend,
    "phi_from_hub": _check_hub,
    "distill_phi": _check_distill,
}


@workflow_files
def test_workflow_runs_end_to_end(path: Path, comfy_server: ComfyServer):
    server = comfy_server
    api = to_api(load(path), server.object_info())
    watched = [server.base_dir / "output", server.base_dir / "models"]
    before = {p: t for folder in watched for p, t in _snapshot(folder).items()}
    result = server.run(api)
    after = {p: t for folder in watched for p, t in _snapshot(folder).items()}
    new = {p for p, t in after.items() if before.get(p) != t}
    images = _images(result)
    assert images or new, f"{path.name} produced no image and wrote no file; outputs: {result.outputs}"
    for image in images:
        if Path(image["filename"]).suffix in VIDEO_SUFFIXES:  # SaveVideo reports its file as "images"
            assert server.output_file(image).stat().st_size > 0
            continue
        file = server.output_file(image)
        with Image.open(io.BytesIO(file.read_bytes())) as picture:
            assert picture.size[0] > 0 and picture.size[1] > 0
    check = EXTRA_CHECKS.get(path.stem)
    if check is not None:
        check(server, api, result, new)


def test_server_lists_workflows_as_templates(comfy_server: ComfyServer):
    listed = comfy_server.get("/api/workflow_templates")
    assert sorted(listed.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        served = comfy_server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{path.name}")
        assert served == load(path)


# --- the converter itself, against the real server's node definitions ----------------------------

def _ui_node(node_id, kind, widgets, inputs=(), outputs=(), mode=0):
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": node_id,
            "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "properties": {},
            "widgets_values": widgets}


def test_converter_maps_widgets_links_reroutes_and_seed_control(comfy_server: ComfyServer):
    """KSampler's seed carries the frontend's control widget; a Reroute and a Note vanish."""
    info = comfy_server.object_info()
    workflow = {
        "last_node_id": 4, "last_link_id": 2, "version": 0.4,
        "nodes": [
            _ui_node(1, "EmptyHunyuanLatentVideo", [64, 64, 9, 1],
                     outputs=[{"name": "LATENT", "type": "LATENT", "links": [1]}]),
            _ui_node(2, "Reroute", [], inputs=[{"name": "", "type": "*", "link": 1}],
                     outputs=[{"name": "", "type": "LATENT", "links": [2]}]),
            _ui_node(3, "KSampler", [7, "fixed", 2, 1.0, "euler", "simple", 1.0],
                     inputs=[{"name": "latent_image", "type": "LATENT", "link": 2}]),
            _ui_node(4, "Note", ["text"]),
        ],
        "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"]],
    }
    with pytest.raises(WorkflowError, match="required inputs not connected"):
        to_api(workflow, info)  # no model/positive/negative: refused before the server sees it
    workflow["nodes"][2]["inputs"] += [{"name": n, "type": t, "link": None} for n, t in
                                       (("model", "MODEL"), ("positive", "CONDITIONING"),
                                        ("negative", "CONDITIONING"))]
    info_ksampler = info["KSampler"]
    partial = {**info, "KSampler": {**info_ksampler, "input": {
        "required": {k: v for k, v in info_ksampler["input"]["required"].items()
                     if k not in ("model", "positive", "negative")}}}}
    api = to_api(workflow, partial)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"] == {"seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                                  "scheduler": "simple", "denoise": 1.0, "latent_image": ["1", 0]}
    assert api["1"]["inputs"] == {"width": 64, "height": 64, "length": 9, "batch_size": 1}
    workflow["nodes"][2]["widgets_values"] = [7, 2, 1.0, "euler", "simple", 1.0]  # control value lost
    with pytest.raises(WorkflowError, match="control_after_generate"):
        to_api(workflow, partial)


def test_validate_widgets_reports_bad_combo_and_range(comfy_server: ComfyServer):
    info = comfy_server.object_info()
    workflow = {"nodes": [_ui_node(1, "KSampler", [7, "fixed", 0, 1.0, "no_such_sampler", "simple", 1.0])],
                "links": []}
    problems = validate_widgets(workflow, info)
    assert any("'steps'" in p and "minimum" in p for p in problems), problems
    assert any("'sampler_name'" in p and "no_such_sampler" in p for p in problems), problems
