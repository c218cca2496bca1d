"""Build the pack's workflows/*.json in the real ComfyUI frontend, so they are exactly what it saves.

Each workflow is described below as nodes (type, title, position, widget values by name) and links
(by slot name); the builder creates them in headless Chromium with LiteGraph (``createNode``,
``connect``), sets the widgets, and writes ``app.graph.serialize()``. The file names in the widgets
are the test harness's (tests/server_models.py ``NAMES``), so every workflow runs end to end in
tests/test_workflows.py; a note in each workflow says which real files to pick instead.

Usage (a running test server is started for the purpose)::

    python tests/server_workflow_builder.py [names...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from comfy_support import REPO_ROOT, comfyui_dir  # noqa: E402
from server_models import NAMES  # noqa: E402

SEED = 42
STEPS = 2
WIDTH = HEIGHT = 64


@dataclass
class Node:
    """One node: its type, widget values by name, title, position and (optional) size."""

    key: str
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    color: str | None = None


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    links: list[tuple[str, str, str, str]]  # (origin key, output name, target key, input name)


NOTE_COMPARE = """## Wan2.1 vs ReHyAt, one seed
Both branches share the checkpoint, conditioning, latent and seed: the top **KSampler** runs stock
softmax attention, the bottom one runs the model patched by **ReHyAt Patch Model** with a distilled φ.
**ReHyAt Compare** puts the decoded clips side by side and reports PSNR/SSIM per clip and per frame,
temporal flicker and the error at chunk boundaries.

This template is wired to the pack's tiny *test* files (`rehyat_test_*`). For real use pick
`wan2.1_t2v_1.3B_fp16.safetensors`, `wan_2.1_vae.safetensors`, your φ file, conditionings saved once
with **ReHyAt Save Conditioning** (from a CLIP Text Encode with umT5), and e.g. 832×480, length 81,
30 steps."""

NOTE_LONG = """## A long clip, chunk by chunk
**ReHyAt Patch Model** with a φ whose blocks are all converted and causal, then **ReHyAt Chunked
Sampler**: the clip is denoised chunk by chunk with constant attention memory (streaming order), and,
with a VAE connected, each chunk is decoded as soon as it is final (frames land in output/ReHyAt).
The figures under the patch and sampler nodes show chunks, FLOPs against softmax and the state size.

Wired to the tiny *test* files; for real use pick the Wan2.1 files, your φ and e.g. length 321."""

NOTE_A14B = """## Wan2.2 A14B: two experts, chunk by chunk
Wan2.2 A14B denoises with two models: a **high-noise** expert for the first steps and a
**low-noise** expert for the rest (stock graphs chain two KSamplerAdvanced nodes). Patch each expert
with **its own φ** (distilled against that expert), connect the high-noise one to `model` and the
low-noise one to `low_noise_model` of **ReHyAt Chunked Sampler**; `switch_step` -1 splits at half of
the steps like the stock template. Inside every chunk the high-noise expert runs its steps, then the
low-noise one, each with its own recurrent state — the stock chain's result, in constant memory,
with frames decoded as each chunk lands. ComfyUI keeps one expert loaded at a time; if both do not
fit on your GPU it swaps them twice per chunk, and `order = sweep` (one swap per clip) is faster.

Wired to the tiny *test* files; for real use pick `wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors`
and `wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors` (or their GGUF versions), the Wan2.1 VAE,
the two φ files and e.g. 832×480, length 321, 20 steps."""

NOTE_HUB = """## φ from the Hugging Face Hub
**ReHyAt Load φ from Hub** downloads a `.safetensors` φ (repo id, file name, revision) into
models/rehyat, or uses the cached copy; with `HF_HUB_OFFLINE=1` it never touches the network.
The repo id here is the tests' offline cache; replace it with the repository of a φ distilled for
your checkpoint."""


def _common_inputs(x: int) -> list[Node]:
    return [
        Node("unet", "UNETLoader", (x, 0), {"unet_name": NAMES.wan, "weight_dtype": "default"},
             "Load Diffusion Model (Wan2.1)"),
        Node("vae", "VAELoader", (x, 140), {"vae_name": NAMES.vae}, "Load VAE (Wan2.1)"),
        Node("pos", "ReHyAtLoadConditioning", (x, 250), {"conditioning_file": NAMES.positive},
             "Positive prompt (saved conditioning)"),
        Node("neg", "ReHyAtLoadConditioning", (x, 350), {"conditioning_file": NAMES.negative},
             "Negative prompt (saved conditioning)"),
    ]


def _ksampler(key: str, pos: tuple[int, int], title: str) -> Node:
    return Node(key, "KSampler", pos, {"seed": SEED, "control_after_generate": "fixed", "steps": STEPS,
                                       "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                                       "denoise": 1.0}, title)


def _patch_widgets(forward_mode: str) -> dict[str, Any]:
    """Patch widgets as for Wan2.1-1.3B (all 30 blocks); the connected φ's own settings rule."""
    return {"num_blocks": 30, "placement": "last", "chunk_frames": 3, "overlap_frames": 1, "causal": True,
            "forward_mode": forward_mode}


def compare_workflow() -> Workflow:
    nodes = [
        *_common_inputs(0),
        Node("latent", "EmptyHunyuanLatentVideo", (0, 450),
             {"width": WIDTH, "height": HEIGHT, "length": 17, "batch_size": 1}, "Empty video latent (Wan)"),
        Node("phi", "ReHyAtLoadPhi", (0, 640), {"phi_file": NAMES.phi}),
        Node("patch", "ReHyAtPatchModel", (420, 560), _patch_widgets("parallel")),
        _ksampler("ks_wan", (980, 0), "KSampler — Wan2.1 (softmax)"),
        _ksampler("ks_rehyat", (980, 560), "KSampler — ReHyAt"),
        Node("dec_wan", "VAEDecode", (1380, 0), {}, "Decode Wan2.1"),
        Node("dec_rehyat", "VAEDecode", (1380, 560), {}, "Decode ReHyAt"),
        Node("compare", "ReHyAtCompare", (1780, 220), {"label_a": "Wan2.1", "label_b": "ReHyAt",
                                                       "chunk_frames": 3, "temporal_factor": 4}),
        Node("save", "SaveImage", (2180, 0), {"filename_prefix": "ReHyAt/compare"}, "Save side by side",
             size=(420, 360)),
        Node("report", "PreviewAny", (2180, 420), {}, "Comparison report", size=(420, 300)),
        Node("patch_report", "PreviewAny", (980, 920), {}, "Patch report", size=(380, 160)),
        Node("note", "MarkdownNote", (420, -260), {"": NOTE_COMPARE}, "About this workflow", size=(520, 330)),
    ]
    links = [
        ("unet", "MODEL", "ks_wan", "model"), ("unet", "MODEL", "patch", "model"),
        ("phi", "phi", "patch", "phi"), ("patch", "model", "ks_rehyat", "model"),
        ("patch", "report", "patch_report", "source"),
        ("pos", "CONDITIONING", "ks_wan", "positive"), ("neg", "CONDITIONING", "ks_wan", "negative"),
        ("pos", "CONDITIONING", "ks_rehyat", "positive"), ("neg", "CONDITIONING", "ks_rehyat", "negative"),
        ("latent", "LATENT", "ks_wan", "latent_image"), ("latent", "LATENT", "ks_rehyat", "latent_image"),
        ("ks_wan", "LATENT", "dec_wan", "samples"), ("vae", "VAE", "dec_wan", "vae"),
        ("ks_rehyat", "LATENT", "dec_rehyat", "samples"), ("vae", "VAE", "dec_rehyat", "vae"),
        ("dec_wan", "IMAGE", "compare", "images_a"), ("dec_rehyat", "IMAGE", "compare", "images_b"),
        ("ks_wan", "LATENT", "compare", "latent_a"), ("ks_rehyat", "LATENT", "compare", "latent_b"),
        ("compare", "side_by_side", "save", "images"), ("compare", "report", "report", "source"),
    ]
    return Workflow("wan_vs_rehyat_compare", nodes, links)


def long_clip_workflow() -> Workflow:
    nodes = [
        *_common_inputs(0),
        Node("latent", "EmptyHunyuanLatentVideo", (0, 450),
             {"width": WIDTH, "height": HEIGHT, "length": 25, "batch_size": 1}, "Empty video latent (Wan)"),
        Node("phi", "ReHyAtLoadPhi", (0, 640), {"phi_file": NAMES.phi}),
        Node("patch", "ReHyAtPatchModel", (420, 0), _patch_widgets("recurrent")),
        Node("sampler", "ReHyAtChunkedSampler", (960, 0),
             {"seed": SEED, "control_after_generate": "fixed", "steps": STEPS, "cfg": 3.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "order": "streaming",
              "state_device": "auto", "switch_step": -1}),
        Node("save", "SaveAnimatedWEBP", (1520, 0), {"filename_prefix": "ReHyAt/long_clip", "fps": 16.0,
                                                     "lossless": False, "quality": 90, "method": "default"},
             "Save the clip", size=(420, 420)),
        Node("patch_report", "PreviewAny", (420, 480), {}, "Patch report", size=(460, 160)),
        Node("note", "MarkdownNote", (420, -300), {"": NOTE_LONG}, "About this workflow", size=(520, 260)),
    ]
    links = [
        ("unet", "MODEL", "patch", "model"), ("phi", "phi", "patch", "phi"),
        ("patch", "model", "sampler", "model"), ("patch", "report", "patch_report", "source"),
        ("pos", "CONDITIONING", "sampler", "positive"), ("neg", "CONDITIONING", "sampler", "negative"),
        ("latent", "LATENT", "sampler", "latent_image"), ("vae", "VAE", "sampler", "vae"),
        ("sampler", "IMAGE", "save", "images"),
    ]
    return Workflow("long_clip_chunked", nodes, links)


def a14b_workflow() -> Workflow:
    high = _common_inputs(0)
    high[0].title = "Load Diffusion Model (high-noise expert)"
    nodes = [
        *high,
        Node("unet_low", "UNETLoader", (0, 450),
             {"unet_name": NAMES.wan_low_noise, "weight_dtype": "default"},
             "Load Diffusion Model (low-noise expert)"),
        Node("shift_high", "ModelSamplingSD3", (0, 560), {"shift": 8.0}, "Shift (high-noise)"),
        Node("shift_low", "ModelSamplingSD3", (0, 660), {"shift": 8.0}, "Shift (low-noise)"),
        Node("latent", "EmptyHunyuanLatentVideo", (0, 760),
             {"width": WIDTH, "height": HEIGHT, "length": 25, "batch_size": 1}, "Empty video latent (Wan)"),
        Node("phi_high", "ReHyAtLoadPhi", (420, 560), {"phi_file": NAMES.phi}, "φ of the high-noise expert"),
        Node("phi_low", "ReHyAtLoadPhi", (420, 760), {"phi_file": NAMES.phi_low_noise},
             "φ of the low-noise expert"),
        Node("patch_high", "ReHyAtPatchModel", (420, 0), _patch_widgets("recurrent"), "Patch (high-noise)"),
        Node("patch_low", "ReHyAtPatchModel", (420, 280), _patch_widgets("recurrent"), "Patch (low-noise)"),
        Node("sampler", "ReHyAtChunkedSampler", (960, 0),
             {"seed": SEED, "control_after_generate": "fixed", "steps": STEPS, "cfg": 3.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "order": "streaming",
              "state_device": "auto", "switch_step": -1}),
        Node("save", "SaveAnimatedWEBP", (1520, 0), {"filename_prefix": "ReHyAt/a14b_long_clip", "fps": 16.0,
                                                     "lossless": False, "quality": 90, "method": "default"},
             "Save the clip", size=(420, 420)),
        Node("note", "MarkdownNote", (960, -320), {"": NOTE_A14B}, "About this workflow", size=(560, 300)),
    ]
    links = [
        ("unet", "MODEL", "shift_high", "model"), ("unet_low", "MODEL", "shift_low", "model"),
        ("shift_high", "MODEL", "patch_high", "model"), ("shift_low", "MODEL", "patch_low", "model"),
        ("phi_high", "phi", "patch_high", "phi"), ("phi_low", "phi", "patch_low", "phi"),
        ("patch_high", "model", "sampler", "model"), ("patch_low", "model", "sampler", "low_noise_model"),
        ("pos", "CONDITIONING", "sampler", "positive"), ("neg", "CONDITIONING", "sampler", "negative"),
        ("latent", "LATENT", "sampler", "latent_image"), ("vae", "VAE", "sampler", "vae"),
        ("sampler", "IMAGE", "save", "images"),
    ]
    return Workflow("wan22_a14b_long_clip", nodes, links)


NOTE_EXTEND = """## Extend a finished clip, with a new prompt
**ReHyAt Chunked Sampler** with `save_state` on writes, after its last chunk, the recurrent states of
every model evaluation to `output/rehyat_states/` (the LATENT carries the file's path); with
`video_prefix` set, each decoded chunk is appended to an MP4 that a player opens while it grows.
**ReHyAt Extend Clip** continues the clip from those states — later, in another run if you like —
here under a second prompt: the new frames carry on from what the first prompt drew, and the result
is exactly what one longer run would have given. Decode the whole LATENT for one video of the clip.
A **ReHyAt Prompt Schedule** does the same inside one run (a prompt per chunk).

Wired to the tiny *test* files; for real use pick the Wan2.1 files, your φ, a length of 4·k·3 + 1
video frames (whole chunks: 81, 129, …) and `extra_frames` a multiple of 3."""


def extend_workflow() -> Workflow:
    second = Node("pos_2", "ReHyAtLoadConditioning", (0, 450), {"conditioning_file": NAMES.positive_2},
                  "Second prompt (saved conditioning)")
    nodes = [
        *_common_inputs(0), second,
        Node("latent", "EmptyHunyuanLatentVideo", (0, 550),
             {"width": WIDTH, "height": HEIGHT, "length": 21, "batch_size": 1}, "Empty video latent (Wan)"),
        Node("phi", "ReHyAtLoadPhi", (0, 740), {"phi_file": NAMES.phi}),
        Node("patch", "ReHyAtPatchModel", (420, 0), _patch_widgets("recurrent")),
        Node("sampler", "ReHyAtChunkedSampler", (960, 0),
             {"seed": SEED, "control_after_generate": "fixed", "steps": STEPS, "cfg": 3.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "order": "streaming",
              "state_device": "auto", "switch_step": -1, "save_state": True,
              "video_prefix": "ReHyAt/first_part", "fps": 16}),
        Node("extend", "ReHyAtExtendClip", (1500, 0),
             {"extra_frames": 3, "save_state": False, "video_prefix": "", "fps": 16}),
        Node("decode", "VAEDecode", (2000, 0), {}, "Decode the whole clip"),
        Node("video", "CreateVideo", (2000, 140), {"fps": 16.0}),
        Node("save", "SaveVideo", (2400, 0), {"filename_prefix": "ReHyAt/extended_clip", "format": "mp4",
                                              "codec": "h264"}, "Save the whole clip", size=(420, 420)),
        Node("note", "MarkdownNote", (960, -330), {"": NOTE_EXTEND}, "About this workflow", size=(560, 300)),
    ]
    links = [
        ("unet", "MODEL", "patch", "model"), ("phi", "phi", "patch", "phi"),
        ("patch", "model", "sampler", "model"), ("patch", "model", "extend", "model"),
        ("pos", "CONDITIONING", "sampler", "positive"), ("neg", "CONDITIONING", "sampler", "negative"),
        ("pos_2", "CONDITIONING", "extend", "positive"), ("neg", "CONDITIONING", "extend", "negative"),
        ("latent", "LATENT", "sampler", "latent_image"), ("vae", "VAE", "sampler", "vae"),
        ("sampler", "LATENT", "extend", "latent"), ("vae", "VAE", "extend", "vae"),
        ("extend", "LATENT", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "video", "images"), ("video", "VIDEO", "save", "video"),
    ]
    return Workflow("extend_clip", nodes, links)


def hub_workflow() -> Workflow:
    nodes = [
        *_common_inputs(0),
        Node("latent", "EmptyHunyuanLatentVideo", (0, 450),
             {"width": WIDTH, "height": HEIGHT, "length": 17, "batch_size": 1}, "Empty video latent (Wan)"),
        Node("hub", "ReHyAtLoadPhiFromHub", (0, 640),
             {"repo_id": NAMES.hub_repo_id, "filename": NAMES.hub_filename, "revision": NAMES.hub_revision},
             size=(380, 150)),
        Node("patch", "ReHyAtPatchModel", (440, 0), _patch_widgets("parallel")),
        _ksampler("ks", (980, 0), "KSampler — ReHyAt"),
        Node("dec", "VAEDecode", (1380, 0), {}, "Decode"),
        Node("save", "SaveImage", (1780, 0), {"filename_prefix": "ReHyAt/hub"}, "Save frames",
             size=(380, 360)),
        Node("info", "PreviewAny", (440, 480), {}, "φ source and metadata", size=(460, 220)),
        Node("note", "MarkdownNote", (440, -260), {"": NOTE_HUB}, "About this workflow", size=(500, 220)),
    ]
    links = [
        ("unet", "MODEL", "patch", "model"), ("hub", "phi", "patch", "phi"),
        ("hub", "info", "info", "source"), ("patch", "model", "ks", "model"),
        ("pos", "CONDITIONING", "ks", "positive"), ("neg", "CONDITIONING", "ks", "negative"),
        ("latent", "LATENT", "ks", "latent_image"), ("ks", "LATENT", "dec", "samples"),
        ("vae", "VAE", "dec", "vae"), ("dec", "IMAGE", "save", "images"),
    ]
    return Workflow("phi_from_hub", nodes, links)


WORKFLOWS = {w.name: w for w in (compare_workflow(), long_clip_workflow(), a14b_workflow(), extend_workflow(),
                                  hub_workflow())}

BUILD_JS = """
const spec = arguments[0];
const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
const graph = window.app.graph;
graph.clear();
const made = {};
for (const n of spec.nodes) {
  const node = LG.createNode(n.type);
  if (!node) throw new Error(`the frontend does not know node type ${n.type}`);
  node.pos = [n.pos[0], n.pos[1]];
  if (n.title) node.title = n.title;
  graph.add(node);
  for (const [name, value] of Object.entries(n.widgets)) {
    const widget = name === "" ? node.widgets?.[0] : node.widgets?.find(w => w.name === name);
    if (!widget) throw new Error(`${n.type} has no widget ${name}: ${node.widgets?.map(w => w.name)}`);
    widget.value = value;
  }
  const size = node.computeSize();
  const wanted = n.size ?? [340, 0];
  node.setSize([Math.max(wanted[0], size[0]), Math.max(wanted[1], size[1])]);
  made[n.key] = node;
}
for (const [from, output, to, input] of spec.links) {
  const a = made[from], b = made[to];
  const out = a.outputs.findIndex(o => o.name === output || o.label === output);
  const inp = b.inputs.findIndex(i => i.name === input);
  if (out < 0 || inp < 0) throw new Error(`no slot ${from}.${output} → ${to}.${input}: `
    + JSON.stringify([a.outputs.map(o => o.name), b.inputs.map(i => i.name)]));
  if (!a.connect(out, b, inp)) throw new Error(`the frontend refused ${from}.${output} → ${to}.${input}`);
}
graph.setDirtyCanvas(true, true);
return JSON.parse(JSON.stringify(graph.serialize()));
"""


def build(browser: Any, workflow: Workflow) -> dict:
    """Create ``workflow`` in the frontend and return what it serialises."""
    spec = {"nodes": [{"key": n.key, "type": n.type, "pos": n.pos, "widgets": n.widgets, "title": n.title,
                       "size": n.size} for n in workflow.nodes],
            "links": [list(link) for link in workflow.links]}
    return browser.js(BUILD_JS, spec)


def main(names: list[str]) -> int:
    from comfy_server import start_server
    from server_browser import open_browser
    from server_models import lay_out_models

    chosen = [WORKFLOWS[n] for n in names] if names else list(WORKFLOWS.values())
    with tempfile.TemporaryDirectory(prefix="rehyat-build-") as tmp:
        base = Path(tmp)
        lay_out_models(base)
        server = start_server(comfyui_dir(), base)
        browser = open_browser()
        try:
            browser.driver.get(server.url)
            browser.wait_for("!!(window.app?.graph && window.app.extensions?.length)", timeout=120,
                             what="the frontend")
            for workflow in chosen:
                data = build(browser, workflow)
                path = REPO_ROOT / "workflows" / f"{workflow.name}.json"
                path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                print(f"wrote {path} ({len(data['nodes'])} nodes, {len(data['links'])} links)")
        finally:
            browser.quit()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
