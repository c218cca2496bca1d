// Node test runner: node --test web/tests/
import assert from "node:assert/strict";
import { test } from "node:test";

import { figureInputs, findLatentSize, findPatchNode, guessModelSize, latentSizeOf } from "../lib/graph.js";

/** A tiny litegraph-shaped graph: nodes by id and links [id, origin, originSlot, target, targetSlot, type]. */
function makeGraph(nodes, links) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const table = new Map(links.map(([id, origin, originSlot, target, targetSlot, type]) => [id,
    { id, origin_id: origin, origin_slot: originSlot, target_id: target, target_slot: targetSlot, type }]));
  for (const [id, origin, originSlot, target, targetSlot, type] of links) {
    const out = byId.get(origin).outputs[originSlot];
    out.type = type;
    (out.links ??= []).push(id);
    byId.get(target).inputs[targetSlot].link = id;
  }
  return { getNodeById: (id) => byId.get(id), getLink: (id) => table.get(id) };
}

const widgets = (values) => Object.entries(values).map(([name, value]) => ({ name, value }));

function wanGraph({ unet = "wan2.1_t2v_1.3B_fp16.safetensors", phi = false } = {}) {
  const nodes = [
    { id: 1, type: "UNETLoader", widgets: widgets({ unet_name: unet }), inputs: [], outputs: [{}] },
    { id: 2, type: "ReHyAtPatchModel", widgets: widgets({ num_blocks: 20, chunk_frames: 2, overlap_frames: 1, causal: true }),
      inputs: [{ name: "model", type: "MODEL" }, { name: "phi", type: "REHYAT_PHI" }], outputs: [{}] },
    { id: 3, type: "EmptyHunyuanLatentVideo", widgets: widgets({ width: 832, height: 480, length: 81, batch_size: 1 }),
      inputs: [], outputs: [{}] },
    { id: 4, type: "ReHyAtChunkedSampler", widgets: widgets({ seed: 1, steps: 2 }),
      inputs: [{ name: "model", type: "MODEL" }, { name: "latent_image", type: "LATENT" }], outputs: [{}] },
    { id: 5, type: "ReHyAtLoadPhi", widgets: [], inputs: [], outputs: [{}] },
  ];
  const links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 3, 0, 4, 1, "LATENT"]];
  if (phi) links.push([4, 5, 0, 2, 1, "REHYAT_PHI"]);
  return { nodes, ...makeGraph(nodes, links) };
}

test("the patch node finds the latent of the sampler its model feeds", () => {
  const g = wanGraph();
  const inputs = figureInputs(g.getNodeById(2), g.getNodeById, g.getLink);
  assert.deepEqual(inputs, { width: 832, height: 480, length: 81, model: "1.3B", chunkFrames: 2, overlapFrames: 1,
    causal: true, blocks: 20, phiConnected: false });
});

test("the sampler reads its latent upstream and the settings of the patch node feeding its model", () => {
  const g = wanGraph({ unet: "Wan2_1-T2V-14B_bf16.safetensors", phi: true });
  const inputs = figureInputs(g.getNodeById(4), g.getNodeById, g.getLink);
  assert.equal(inputs.model, "14B");
  assert.equal(inputs.chunkFrames, 2);
  assert.equal(inputs.blocks, 20);
  assert.equal(inputs.phiConnected, true);
  assert.equal(findPatchNode(g.getNodeById(4), g.getNodeById, g.getLink).id, 2);
  assert.equal(guessModelSize(g.getNodeById(4), g.getNodeById, g.getLink), "14B");
});

test("no latent connected → null; latent size needs integer width, height and length", () => {
  const nodes = [{ id: 1, type: "ReHyAtPatchModel", widgets: [], inputs: [], outputs: [{ type: "MODEL" }] }];
  const g = makeGraph(nodes, []);
  assert.equal(figureInputs(nodes[0], g.getNodeById, g.getLink), null);
  assert.equal(latentSizeOf({ widgets: widgets({ width: 64, height: 64 }) }), null);
  assert.deepEqual(latentSizeOf({ widgets: widgets({ width: 64, height: 32, num_frames: 9 }) }),
    { width: 64, height: 32, length: 9 });
  assert.equal(findLatentSize(nodes[0], g.getNodeById, g.getLink), null);
});

test("a streaming SAMPLER node reads the SamplerCustomAdvanced it feeds (model through the guider)", () => {
  const nodes = [
    { id: 1, type: "UNETLoader", widgets: widgets({ unet_name: "wan2.1_t2v_14B_bf16.safetensors" }), inputs: [],
      outputs: [{}] },
    { id: 2, type: "ReHyAtPatchModel", widgets: widgets({ num_blocks: 40, chunk_frames: 3, overlap_frames: 1, causal: true }),
      inputs: [{ name: "model", type: "MODEL" }], outputs: [{}] },
    { id: 3, type: "CFGGuider", widgets: widgets({ cfg: 5 }), inputs: [{ name: "model", type: "MODEL" }], outputs: [{}] },
    { id: 4, type: "ReHyAtStreamingSampler", widgets: widgets({ sampler_name: "euler" }), inputs: [], outputs: [{}] },
    { id: 5, type: "EmptyHunyuanLatentVideo", widgets: widgets({ width: 832, height: 480, length: 321 }), inputs: [],
      outputs: [{}] },
    { id: 6, type: "SamplerCustomAdvanced", widgets: [],
      inputs: [{ name: "guider", type: "GUIDER" }, { name: "sampler", type: "SAMPLER" }, { name: "latent_image", type: "LATENT" }],
      outputs: [{}] },
  ];
  const g = makeGraph(nodes, [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 6, 0, "GUIDER"],
    [4, 4, 0, 6, 1, "SAMPLER"], [5, 5, 0, 6, 2, "LATENT"]]);
  assert.deepEqual(figureInputs(g.getNodeById(4), g.getNodeById, g.getLink), { width: 832, height: 480, length: 321,
    model: "14B", chunkFrames: 3, overlapFrames: 1, causal: true, blocks: 40, phiConnected: false });
  // not connected to any sampling node yet
  const lone = makeGraph([{ id: 9, type: "ReHyAtStreamingSampler", widgets: [], inputs: [], outputs: [{ type: "SAMPLER" }] }], []);
  assert.equal(figureInputs(lone.getNodeById(9), lone.getNodeById, lone.getLink), null);
});
