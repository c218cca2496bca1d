"""The frontend extension (web/): its logic under Node's test runner and against the Python core, and
the extension itself in the real ComfyUI frontend in headless Chromium (console, figures, screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer, comfy_server_fixture  # noqa: F401  (fixture comfy_server)
from comfy_support import REPO_ROOT
from PIL import Image
from server_browser import open_browser, skip_or_fail
from workflow_api import to_api, widget_specs

from rehyat import FeatureMapConfig, FeatureMapPair, HybridAttentionConfig, rehyat_attention
from rehyat.flops import rehyat_attention_flops, softmax_attention_flops
from rehyat.ops.layout import chunk_layout
from rehyat.video_latent import WAN_LATENT_CHANNELS, WAN_SPACE_STRIDE, WAN_TIME_STRIDE

WEB = REPO_ROOT / "web"
SCREENSHOT = REPO_ROOT / ".cache" / "test-artifacts" / "rehyat_web_extension.png"
PROGRESS_SCREENSHOT = SCREENSHOT.with_name("rehyat_chunk_progress.png")
EXTENSION = "ReHyAt.Figures"
TEXT_RGB = (0x9F, 0xD3, 0xFF)  # web/rehyat.js TEXT_COLOR


def node_binary() -> str:
    path = shutil.which("node")
    if path is None:
        skip_or_fail("Node.js is not installed (needed for web/tests)")
    return path


def run_node_module(source: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([node_binary(), "--input-type=module", "-e", source], cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=60, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_web_logic_node_test_runner():
    """web/tests/*.test.mjs under ``node --test`` (plain functions: figures and graph walking)."""
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (WEB / "tests").glob("*.test.mjs"))
    assert files, "no web/tests/*.test.mjs"
    result = subprocess.run([node_binary(), "--test", *files], cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass " in result.stdout


def test_js_defaults_equal_the_python_configs():
    """web/lib/figures.js states rehyat/config.py's defaults and the VAE strides of video_latent.py."""
    source = f"""
        import * as f from {json.dumps((WEB / 'lib' / 'figures.js').as_uri())};
        console.log(JSON.stringify({{defaults: f.REHYAT_DEFAULTS, wan: f.WAN21}}));"""
    js = json.loads(run_node_module(source))
    a = HybridAttentionConfig()
    assert js["defaults"] == {"chunkFrames": a.chunk_frames, "overlapFrames": a.overlap_frames,
                              "causal": a.causal, "hiddenDim": a.feature_map.hidden_dim,
                              "featureDim": a.feature_map.feature_dim}
    assert (js["wan"]["latentChannels"], js["wan"]["spatialStride"], js["wan"]["temporalStride"]) == (
        WAN_LATENT_CHANNELS, WAN_SPACE_STRIDE, WAN_TIME_STRIDE)


CASES = [  # (heads, head_dim, frames, tokens_per_frame, Tc, To, causal, hidden, feature)
    (2, 16, 7, 6, 3, 1, True, 8, 12),
    (12, 128, 21, 1560, 3, 1, True, 256, 256),
    (40, 128, 5, 15, 2, 0, False, 32, 64),
    (1, 8, 1, 4, 3, 2, True, 4, 4),
]


def test_js_figures_equal_the_python_core():
    """FLOPs (rehyat.flops), chunk counts (layout) and state bytes (a real recurrent run's state)."""
    source = f"""
        import * as f from {json.dumps((WEB / 'lib' / 'figures.js').as_uri())};
        const cases = JSON.parse(process.env.REHYAT_CASES);
        console.log(JSON.stringify(cases.map(([h, d, t, p, tc, to, causal, hidden, feature]) => ({{
          flops: f.rehyatAttentionFlops(1, h, t, p, d, {{chunkFrames: tc, overlapFrames: to, causal,
                                                       hiddenDim: hidden, featureDim: feature}}),
          softmax: f.softmaxAttentionFlops(1, h, t * p, d),
          chunks: f.chunkLayout(t, tc, to).length,
          state: f.stateBytesPerBlock({{heads: h, headDim: d, featureDim: feature, overlapFrames: to,
                                        tokensPerFrame: p, activationBytes: 2}}),
        }}))));"""
    results = json.loads(run_node_module(source, {"REHYAT_CASES": json.dumps(CASES)}))
    for case, js in zip(CASES, results, strict=True):
        heads, d, frames, p, tc, to, causal, hidden, feature = case
        fm = FeatureMapConfig(hidden_dim=hidden, feature_dim=feature)
        py = rehyat_attention_flops(1, heads, frames, p, d, chunk_frames=tc, overlap_frames=to,
                                    feature_map=fm, causal=causal)
        assert js["flops"] == {"softmax": py.softmax, "featureMaps": py.feature_maps, "linear": py.linear,
                               "total": py.total}, case
        assert js["softmax"] == softmax_attention_flops(1, heads, frames * p, d)
        assert js["chunks"] == len(chunk_layout(frames, tc, to))
        if causal and heads * d * frames * p <= 1_000_000 and frames > to:
            pair = FeatureMapPair(heads, d, fm)
            q, k, v = (torch.randn(1, heads, frames * p, d, dtype=torch.bfloat16) for _ in range(3))
            with torch.no_grad():
                _, state = rehyat_attention(q, k, v, phi_q=pair.phi_q, phi_k=pair.phi_k, tokens_per_frame=p,
                                            chunk_frames=tc, overlap_frames=to, mode="recurrent",
                                            output_final_state=True)
            if frames - to > 0 and state.has_linear_part:
                assert js["state"] == state.nbytes(), case


# --- the extension in the real frontend -----------------------------------------------------------

def _widgets_values(info: dict, kind: str, overrides: dict) -> list:
    values = []
    for spec in widget_specs(info[kind]):
        default = spec.options.get("default", spec.choices[0] if spec.choices else 0)
        values.append(overrides.get(spec.name, default))
        if spec.extra_values:
            values.append("fixed")
    return values


def _patch_node_type(info: dict) -> str:
    return "ReHyAtPatchModel" if "ReHyAtPatchModel" in info else "ReHyAtPatchWan"


def overlay_graph(info: dict) -> dict:
    """UI workflow: UNETLoader → ReHyAt patch → KSampler ← EmptyHunyuanLatentVideo (832×480×81)."""
    patch = _patch_node_type(info)

    def node(node_id, kind, pos, inputs, outputs, overrides=None):
        return {"id": node_id, "type": kind, "pos": pos, "size": [320, 200], "flags": {}, "order": node_id,
                "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": kind},
                "widgets_values": _widgets_values(info, kind, overrides or {})}

    model_input = next(name for name, spec in info[patch]["input"]["required"].items() if spec[0] == "MODEL")
    return {
        "last_node_id": 4, "last_link_id": 3, "version": 0.4, "config": {}, "extra": {}, "groups": [],
        "nodes": [
            node(1, "UNETLoader", [-420, 0], [], [{"name": "MODEL", "type": "MODEL", "links": [1]}],
                 {"unet_name": "rehyat_test_wan.safetensors"}),
            node(2, patch, [0, 0], [{"name": model_input, "type": "MODEL", "link": 1}],
                 [{"name": "MODEL", "type": "MODEL", "links": [2]}], {"num_blocks": 30}),
            node(3, "EmptyHunyuanLatentVideo", [-420, 260], [],
                 [{"name": "LATENT", "type": "LATENT", "links": [3]}],
                 {"width": 832, "height": 480, "length": 81}),
            node(4, "KSampler", [560, 0],
                 [{"name": "model", "type": "MODEL", "link": 2},
                  {"name": "positive", "type": "CONDITIONING", "link": None},
                  {"name": "negative", "type": "CONDITIONING", "link": None},
                  {"name": "latent_image", "type": "LATENT", "link": 3}],
                 [{"name": "LATENT", "type": "LATENT", "links": []}]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 3, "LATENT"]],
    }


def expected_lines(**inputs) -> list[str]:
    source = f"""
        import * as f from {json.dumps((WEB / 'lib' / 'figures.js').as_uri())};
        console.log(JSON.stringify(f.figureLines(f.rehyatFigures(JSON.parse(process.env.REHYAT_INPUTS)))));"""
    return json.loads(run_node_module(source, {"REHYAT_INPUTS": json.dumps(inputs)}))


@pytest.fixture(scope="module")
def browser(comfy_server: ComfyServer):
    browser = open_browser()
    try:
        browser.driver.get(comfy_server.url)
        browser.wait_for(f"window.app?.graph && window.app.extensions?.some(e => e.name === '{EXTENSION}')",
                         timeout=90, what=f"the frontend with extension {EXTENSION}")
        yield browser
    finally:
        browser.quit()


def test_extension_is_served_and_namespaced(comfy_server: ComfyServer):
    listed = comfy_server.get("/extensions")
    ours = [path for path in listed if "/ComfyUI-ReHyAt/" in path]
    assert "/extensions/ComfyUI-ReHyAt/rehyat.js" in ours, listed
    assert not [p for p in ours if "/tests/" in p], "Node test files must not be served as extensions"
    source = (WEB / "rehyat.js").read_text()
    assert 'const EXTENSION_NAME = "ReHyAt.Figures"' in source


def test_extension_loads_without_console_errors(browser):
    names = browser.js("return window.app.extensions.map(e => e.name).filter(n => n.startsWith('ReHyAt'))")
    assert names == [EXTENSION]
    assert browser.unexpected_errors() == []


def test_figures_on_patch_node_follow_widgets_and_screenshot(browser, comfy_server: ComfyServer):
    info = comfy_server.object_info()
    browser.js("await window.app.loadGraphData(arguments[0]);", overlay_graph(info))
    browser.wait_for("!!window.app.graph.getNodeById(2)", what="the patch node")
    draw = "window.app.canvas.draw(true, true); return window.app.graph.getNodeById(2).rehyat?.lines;"
    lines = browser.js(draw)
    widgets = dict(browser.js("return window.app.graph.getNodeById(2).widgets.map(w => [w.name, w.value]);"))
    settings = {"chunkFrames": widgets.get("chunk_frames"), "overlapFrames": widgets.get("overlap_frames"),
                "causal": widgets.get("causal"), "blocks": widgets.get("num_blocks")}
    base = {"width": 832, "height": 480, "length": 81, "model": "1.3B"}
    expected = expected_lines(**base, **{k: v for k, v in settings.items() if v is not None})
    assert lines[0] == f"Wan2.1-1.3B: {expected[0]}" and lines[1:3] == expected[1:3]
    frames = (81 - 1) // 4 + 1
    chunks = len(chunk_layout(frames, settings["chunkFrames"] or 3, settings["overlapFrames"] or 1))
    assert f"→ {chunks} chunks" in lines[0]

    # live: a widget change (as the user makes it: value + callback) redraws new figures
    browser.js("""const n = window.app.graph.getNodeById(2);
                  const w = n.widgets.find(w => w.name === 'chunk_frames'); w.value = 5;
                  w.callback?.(5, window.app.canvas, n);""")
    lines5 = browser.js(draw)
    assert lines5[0].endswith(f"→ 5 chunks (Tc=5, To={settings['overlapFrames'] or 1})"), lines5
    assert lines5[1] != lines[1]
    # and so does a different latent size upstream
    browser.js("window.app.graph.getNodeById(3).widgets.find(w => w.name === 'length').value = 161;")
    lines161 = browser.js(draw)
    assert lines161[0].startswith("Wan2.1-1.3B: 41 latent frames × 1560 tokens → 9 chunks"), lines161

    browser.js("""const c = window.app.canvas; const n = window.app.graph.getNodeById(2);
                  c.ds.scale = 1; c.ds.offset[0] = 480 - n.pos[0]; c.ds.offset[1] = 160 - n.pos[1];
                  c.setDirty(true, true); c.draw(true, true);""")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.driver.save_screenshot(str(SCREENSHOT))
    with Image.open(SCREENSHOT) as shot:
        pixels = np.asarray(shot.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    text_pixels = int((np.abs(pixels - np.array(TEXT_RGB)).max(axis=-1) <= 40).sum())
    assert text_pixels > 200, f"the figures' text colour barely appears in {SCREENSHOT} ({text_pixels} px)"
    assert browser.unexpected_errors() == []



WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def _bypassed_patch_variant() -> dict:
    """The comparison workflow with the patch node bypassed and its report preview muted."""
    workflow = json.loads((REPO_ROOT / "workflows" / "wan_vs_rehyat_compare.json").read_text())
    patch = next(n for n in workflow["nodes"] if n["type"] == "ReHyAtPatchModel")
    patch["mode"] = 4
    report_links = set(patch["outputs"][1]["links"] or [])
    for node in workflow["nodes"]:
        if any(i.get("link") in report_links for i in node.get("inputs", [])):
            node["mode"] = 2
    return workflow


VARIANTS = [(p.stem, lambda p=p: json.loads(p.read_text())) for p in WORKFLOWS]
if (REPO_ROOT / "workflows" / "wan_vs_rehyat_compare.json").exists():
    VARIANTS.append(("compare_with_patch_bypassed", _bypassed_patch_variant))


@pytest.mark.parametrize("make", [v[1] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_frontend_loads_workflow_and_converts_it_like_the_harness(browser, comfy_server: ComfyServer, make):
    """The real frontend's own graphToPrompt gives the API prompt tests/workflow_api.py gives
    (also through a bypassed node and a muted one)."""
    workflow = make()
    frontend = browser.js("await window.app.loadGraphData(arguments[0]); "
                          "return (await window.app.graphToPrompt()).output;", workflow)
    ours = to_api(workflow, comfy_server.object_info())
    info = comfy_server.object_info()

    def declared(kind: str) -> set[str]:
        inputs = info[kind]["input"]
        return {*inputs.get("required", {}), *inputs.get("optional", {})}

    def strip(prompt: dict) -> dict:
        """What the server reads: class and declared inputs (frontend-only widgets such as
        PreviewAny's 'preview' text box are sent too, and ignored by the server)."""
        return {k: {"class_type": v["class_type"],
                    "inputs": {n: x for n, x in v["inputs"].items() if n in declared(v["class_type"])}}
                for k, v in prompt.items()}

    assert strip(frontend) == strip(ours)
    assert not {str(n["id"]) for n in workflow["nodes"] if n.get("mode") in (2, 4)} & set(ours)
    assert browser.unexpected_errors() == []


def test_chunk_progress_from_a_real_run_and_screenshot(browser, comfy_server: ComfyServer):
    """Queue the long-clip workflow from the page: the sampler node shows the server's chunk progress."""
    path = REPO_ROOT / "workflows" / "long_clip_chunked.json"
    if not path.exists():
        skip_or_fail("workflows/long_clip_chunked.json is missing")
    workflow = json.loads(path.read_text())
    sampler = next(n["id"] for n in workflow["nodes"] if n["type"] == "ReHyAtChunkedSampler")
    patch = next(n["id"] for n in workflow["nodes"] if n["type"] == "ReHyAtPatchModel")
    browser.js("await window.app.loadGraphData(arguments[0]);", workflow)
    # a seed no other test used, so the server's cache cannot skip the sampler
    browser.js(f"window.app.graph.getNodeById({sampler}).widgets.find(w => w.name === 'seed').value = 4242;")
    browser.js("await window.app.queuePrompt(0, 1);")
    detail = browser.wait_for(
        f"(() => {{ const p = window.app.graph.getNodeById({sampler}).rehyat?.progress;"
        " return p && p.chunk === p.chunks && p.step === p.steps ? p : null; })()",
        timeout=180, what="the last rehyat.chunk_progress event on the sampler node")
    assert detail["chunks"] > 1 and detail["order"] == "streaming"
    events = browser.js(f"return window.app.graph.getNodeById({sampler}).rehyat.progressEvents;")
    assert events >= detail["chunks"] * detail["steps"]
    draw = ("window.app.canvas.draw(true, true);"
            " return window.app.graph.getNodeById(arguments[0]).rehyat.lines")
    sampler_lines, patch_lines = browser.js(draw, sampler), browser.js(draw, patch)
    assert f"→ {detail['chunks']} chunks" in sampler_lines[0] and sampler_lines[:3] == patch_lines[:3]
    browser.js(f"""const c = window.app.canvas; const n = window.app.graph.getNodeById({patch});
                   c.ds.scale = 0.9; c.ds.offset[0] = 120 - n.pos[0]; c.ds.offset[1] = 180 - n.pos[1];
                   c.setDirty(true, true); c.draw(true, true);""")
    browser.driver.save_screenshot(str(PROGRESS_SCREENSHOT))
    assert browser.unexpected_errors() == []
