// ComfyUI-ReHyAt frontend extension "ReHyAt.Figures".
//
// On the ReHyAt Patch Model and Chunked/Streaming Sampler nodes it draws, under the widgets and live
// as widgets or links change: the number of chunks, attention FLOPs against softmax and the
// recurrent state size for the connected latent's width, height and length; while a chunked sampler
// runs, its chunk progress from the `rehyat.chunk_progress` websocket event. The arithmetic lives
// in ./lib (plain functions tested with Node's test runner).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { figureLines, progressFraction, progressLine, rehyatFigures } from "./lib/figures.js";
import { PATCH_NODE_TYPES, SAMPLER_NODE_TYPES, figureInputs, upstream } from "./lib/graph.js";

const EXTENSION_NAME = "ReHyAt.Figures";
const PROGRESS_EVENT = "rehyat.chunk_progress";
const LINE_HEIGHT = 15;
const PADDING = 6;
const MAX_LINES = 5; // figures (3) + φ note + progress
const MIN_WIDTH = 490;
const TEXT_COLOR = "#9fd3ff";
const NOTE_COLOR = "#c8c8c8";
const BAR_COLOR = "#3d8bfd";

function graphLookups(node) {
  const graph = node.graph ?? app.graph;
  const links = graph?.links;
  const getLink = (id) => (typeof links?.get === "function" ? links.get(id) : links?.[id]);
  const getNodeById = (id) => graph?.getNodeById(id);
  return { getNodeById, getLink };
}

/** The overlay's lines for `node` (also kept on `node.rehyat` for tests and other extensions). */
function overlayLines(node) {
  const { getNodeById, getLink } = graphLookups(node);
  const state = (node.rehyat ??= { lines: [], error: null, progress: null });
  try {
    const inputs = figureInputs(node, getNodeById, getLink);
    if (!inputs) {
      state.lines = ["connect a video latent (width/height/length) to see ReHyAt figures"];
    } else {
      state.lines = figureLines(rehyatFigures(inputs));
      state.lines[0] = `Wan2.1-${inputs.model}: ${state.lines[0]}`;
      if (inputs.phiConnected) state.lines.push("φ connected: the φ file's Tc/To/blocks rule");
    }
    state.error = null;
  } catch (error) {
    state.lines = [`ReHyAt figures: ${error.message}`];
    state.error = error.message;
  }
  const progress = progressLine(state.progress);
  return progress ? [...state.lines, progress] : state.lines;
}

function drawOverlay(node, ctx) {
  if (node.flags?.collapsed) return;
  const lines = overlayLines(node);
  const top = node.size[1] - MAX_LINES * LINE_HEIGHT - PADDING;
  ctx.save();
  ctx.font = "11px monospace";
  ctx.textBaseline = "top";
  lines.forEach((line, index) => {
    ctx.fillStyle = index < node.rehyat.lines.length ? (line.startsWith("φ") ? NOTE_COLOR : TEXT_COLOR) : NOTE_COLOR;
    ctx.fillText(line, PADDING, top + index * LINE_HEIGHT, node.size[0] - 2 * PADDING);
  });
  if (node.rehyat.progress) {
    const y = top + lines.length * LINE_HEIGHT;
    const width = node.size[0] - 2 * PADDING;
    ctx.fillStyle = "#333";
    ctx.fillRect(PADDING, y, width, 4);
    ctx.fillStyle = BAR_COLOR;
    ctx.fillRect(PADDING, y, width * progressFraction(node.rehyat.progress), 4);
  }
  ctx.restore();
}

function extendNodeType(nodeType) {
  const computeSize = nodeType.prototype.computeSize;
  nodeType.prototype.computeSize = function (...args) {
    const size = computeSize.apply(this, args);
    return [Math.max(size[0], MIN_WIDTH), size[1] + MAX_LINES * LINE_HEIGHT + PADDING + 6];
  };
  const onNodeCreated = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function (...args) {
    const result = onNodeCreated?.apply(this, args);
    this.rehyat = { lines: [], error: null, progress: null };
    this.setSize(this.computeSize());
    for (const widget of this.widgets ?? []) {
      const callback = widget.callback;
      widget.callback = function (...cbArgs) {
        const out = callback?.apply(this, cbArgs);
        app.graph?.setDirtyCanvas(true, false);
        return out;
      };
    }
    return result;
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx, ...args) {
    const result = onDrawForeground?.apply(this, [ctx, ...args]);
    drawOverlay(this, ctx);
    return result;
  };
  const onConnectionsChange = nodeType.prototype.onConnectionsChange;
  nodeType.prototype.onConnectionsChange = function (...args) {
    const result = onConnectionsChange?.apply(this, args);
    app.graph?.setDirtyCanvas(true, false);
    return result;
  };
}

function isOverlayNode(node) {
  return PATCH_NODE_TYPES.includes(node?.type) || SAMPLER_NODE_TYPES.includes(node?.type);
}

function onChunkProgress(event) {
  const detail = event.detail;
  let node = app.graph?.getNodeById(detail?.node) ?? app.graph?.getNodeById(Number(detail?.node));
  if (node && !isOverlayNode(node)) {
    // a SamplerCustom(Advanced) running the ReHyAt Streaming Sampler: show it on the SAMPLER node
    const { getNodeById, getLink } = graphLookups(node);
    const source = upstream(node, "SAMPLER", getNodeById, getLink);
    if (isOverlayNode(source)) node = source;
  }
  if (!node) return;
  node.rehyat ??= { lines: [], error: null, progress: null };
  node.rehyat.progress = detail;
  node.rehyat.progressEvents = (node.rehyat.progressEvents ?? 0) + 1;
  app.graph.setDirtyCanvas(true, false);
}

app.registerExtension({
  name: EXTENSION_NAME,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (PATCH_NODE_TYPES.includes(nodeData.name) || SAMPLER_NODE_TYPES.includes(nodeData.name)) {
      extendNodeType(nodeType);
    }
  },
  async setup() {
    api.addEventListener(PROGRESS_EVENT, onChunkProgress);
    api.addEventListener("execution_start", () => {
      for (const node of app.graph?._nodes ?? []) if (node.rehyat) node.rehyat.progress = null;
    });
  },
});
