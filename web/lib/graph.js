// Graph walking for the ReHyAt overlay: where a node's latent size, ReHyAt settings and model size
// come from. Works on anything shaped like a litegraph graph (nodes with `type`, `widgets`, `inputs`
// [{name, type, link}], `outputs` [{type, links}]) and a `getLink(id)` → {origin_id, target_id}
// lookup, so Node's test runner can use plain objects.

export const PATCH_NODE_TYPES = Object.freeze(["ReHyAtPatchModel", "ReHyAtPatchWan"]);
export const SAMPLER_NODE_TYPES = Object.freeze(["ReHyAtChunkedSampler", "ReHyAtStreamingSampler"]);
const MAX_HOPS = 32;

/** The value of widget `name` (undefined when the node has no such widget). */
export function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function firstWidget(node, names) {
  for (const name of names) {
    const value = widgetValue(node, name);
    if (value !== undefined) return value;
  }
  return undefined;
}

/** Upstream node feeding `node`'s first input of type `type` (or named `type`), or null. */
export function upstream(node, type, getNodeById, getLink) {
  const input = node?.inputs?.find((i) => i.link != null && (i.type === type || i.name === type));
  if (!input) return null;
  const link = getLink(input.link);
  return link ? getNodeById(link.origin_id) : null;
}

/** Nodes fed by `node`'s outputs of type `type`. */
export function downstream(node, type, getNodeById, getLink) {
  const found = [];
  for (const output of node?.outputs ?? []) {
    if (output.type !== type) continue;
    for (const id of output.links ?? []) {
      const link = getLink(id);
      const target = link ? getNodeById(link.target_id) : null;
      if (target) found.push(target);
    }
  }
  return found;
}

/** Pixel size {width, height, length} of a node that defines a video latent, or null. */
export function latentSizeOf(node) {
  const width = widgetValue(node, "width");
  const height = widgetValue(node, "height");
  const length = firstWidget(node, ["length", "num_frames", "frames"]);
  if ([width, height, length].every((v) => Number.isInteger(v))) return { width, height, length };
  return null;
}

/** Walk LATENT inputs upstream from `node` to the node that sets the latent's size. */
export function findLatentSize(node, getNodeById, getLink) {
  let current = node;
  for (let hop = 0; current && hop < MAX_HOPS; hop += 1) {
    const size = latentSizeOf(current);
    if (size) return { ...size, source: current };
    current = upstream(current, "LATENT", getNodeById, getLink);
  }
  return null;
}

/** From a MODEL-producing node, the latent size of the first sampler its model reaches. */
export function findLatentSizeDownstream(node, getNodeById, getLink) {
  const queue = [node];
  const seen = new Set();
  while (queue.length && seen.size < MAX_HOPS) {
    const current = queue.shift();
    if (!current || seen.has(current.id)) continue;
    seen.add(current.id);
    if (current !== node && current.inputs?.some((i) => i.type === "LATENT" && i.link != null)) {
      const size = findLatentSize(current, getNodeById, getLink);
      if (size) return size;
    }
    queue.push(...downstream(current, "MODEL", getNodeById, getLink));
  }
  return null;
}

/** The node feeding `node`'s model: its MODEL input, or through a GUIDER (SamplerCustomAdvanced). */
function modelSource(node, getNodeById, getLink) {
  return upstream(node, "MODEL", getNodeById, getLink) ?? upstream(node, "GUIDER", getNodeById, getLink);
}

/** The ReHyAt patch node upstream of `node`'s MODEL input (or `node` itself), or null. */
export function findPatchNode(node, getNodeById, getLink) {
  let current = node;
  for (let hop = 0; current && hop < MAX_HOPS; hop += 1) {
    if (PATCH_NODE_TYPES.includes(current.type)) return current;
    current = modelSource(current, getNodeById, getLink);
  }
  return null;
}

/** For a node that outputs a SAMPLER (ReHyAtStreamingSampler): the sampling node that uses it. */
export function samplerConsumer(node, getNodeById, getLink) {
  return downstream(node, "SAMPLER", getNodeById, getLink)[0] ?? null;
}

/** "14B" when a model loader upstream names a 14B checkpoint, else "1.3B". */
export function guessModelSize(node, getNodeById, getLink) {
  let current = node;
  for (let hop = 0; current && hop < MAX_HOPS; hop += 1) {
    const name = firstWidget(current, ["unet_name", "ckpt_name", "model_name"]);
    if (typeof name === "string") return /14b/i.test(name) ? "14B" : "1.3B";
    current = modelSource(current, getNodeById, getLink);
  }
  return "1.3B";
}

/** ReHyAt settings read from a patch node's widgets (undefined where the node has no widget). */
export function patchSettings(patchNode) {
  if (!patchNode) return {};
  const blocks = firstWidget(patchNode, ["num_blocks", "blocks"]);
  return {
    chunkFrames: widgetValue(patchNode, "chunk_frames"),
    overlapFrames: widgetValue(patchNode, "overlap_frames"),
    causal: widgetValue(patchNode, "causal"),
    blocks: Number.isInteger(blocks) ? blocks : undefined,
  };
}

/** Everything `rehyatFigures` needs for `node`, or null when no latent size can be found. */
export function figureInputs(node, getNodeById, getLink) {
  const isPatch = PATCH_NODE_TYPES.includes(node.type);
  // a SAMPLER-producing node reads the latent and model of the sampling node it feeds
  const base = !isPatch && node.outputs?.some((o) => o.type === "SAMPLER")
    ? samplerConsumer(node, getNodeById, getLink)
    : node;
  if (!base) return null;
  const size = isPatch
    ? findLatentSizeDownstream(node, getNodeById, getLink)
    : findLatentSize(base, getNodeById, getLink);
  if (!size) return null;
  const patch = isPatch ? node : findPatchNode(base, getNodeById, getLink);
  const settings = patchSettings(patch);
  const own = patchSettings(node);  // a sampler may carry its own chunk settings
  const pick = (key) => own[key] ?? settings[key];
  return {
    width: size.width, height: size.height, length: size.length,
    model: guessModelSize(patch ?? base, getNodeById, getLink),
    chunkFrames: pick("chunkFrames"), overlapFrames: pick("overlapFrames"), causal: pick("causal"),
    blocks: pick("blocks"),
    phiConnected: Boolean(patch?.inputs?.some((i) => i.type === "REHYAT_PHI" && i.link != null)),
  };
}
