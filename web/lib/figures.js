// ReHyAt figures for a Wan2.1 latent: chunks, attention FLOPs against softmax, recurrent state size.
//
// Plain functions (no ComfyUI, no DOM) so Node's test runner checks them; they mirror the Python
// core exactly: rehyat/ops/layout.py (chunk_layout), rehyat/flops.py (softmax_attention_flops,
// rehyat_attention_flops) and rehyat/ops/state.py (RecurrentState: S, z in fp32 plus the overlap
// frames' K and V in the activation dtype).

/** Wan2.1 geometry: 16 latent channels, /8 spatial, /4 temporal (+1), 2×2 patches, head dim 128. */
export const WAN21 = Object.freeze({
  latentChannels: 16,
  spatialStride: 8,
  temporalStride: 4,
  patch: 2,
  headDim: 128,
});

/** The two Wan2.1 text-to-video sizes: width, heads and blocks. */
export const WAN21_MODELS = Object.freeze({
  "1.3B": Object.freeze({ dim: 1536, heads: 12, blocks: 30 }),
  "14B": Object.freeze({ dim: 5120, heads: 40, blocks: 40 }),
});

/** Defaults of rehyat/config.py: Tc, To, causal and the φ widths (per head); tests/test_web_extension.py
 * pins them (and WAN21's strides, rehyat/video_latent.py) equal to the Python side. */
export const REHYAT_DEFAULTS = Object.freeze({
  chunkFrames: 3,
  overlapFrames: 1,
  causal: true,
  hiddenDim: 256,
  featureDim: 256,
});

function requireInt(name, value, low) {
  if (!Number.isInteger(value) || value < low) {
    throw new RangeError(`${name} must be an integer ≥ ${low}; got ${value}`);
  }
}

/**
 * Latent grid of a Wan2.1 video of `width`×`height` pixels and `length` frames.
 * Frames: floor((length − 1) / 4) + 1; ComfyUI pads the latent to whole 2×2 patches.
 */
export function wanLatentGrid({ width, height, length }) {
  requireInt("width", width, WAN21.spatialStride);
  requireInt("height", height, WAN21.spatialStride);
  requireInt("length", length, 1);
  const latentWidth = Math.floor(width / WAN21.spatialStride);
  const latentHeight = Math.floor(height / WAN21.spatialStride);
  const frames = Math.floor((length - 1) / WAN21.temporalStride) + 1;
  const tokensPerFrame = Math.ceil(latentHeight / WAN21.patch) * Math.ceil(latentWidth / WAN21.patch);
  return { frames, latentWidth, latentHeight, tokensPerFrame, tokens: frames * tokensPerFrame };
}

/** Chunks of `frames` latent frames (rehyat/ops/layout.py chunk_layout without an initial state). */
export function chunkLayout(frames, chunkFrames, overlapFrames) {
  requireInt("frames", frames, 1);
  requireInt("chunk_frames", chunkFrames, 1);
  requireInt("overlap_frames", overlapFrames, 0);
  const chunks = [];
  for (let start = 0, index = 0; start < frames; start += chunkFrames, index += 1) {
    const end = Math.min(start + chunkFrames, frames);
    chunks.push({ index, frameStart: start, frameEnd: end, windowStart: Math.max(start - overlapFrames, 0), windowEnd: end });
  }
  return chunks;
}

/** Forward FLOPs of full softmax attention (QKᵀ and AV, 2 FLOPs per multiply-add). */
export function softmaxAttentionFlops(batch, heads, tokens, headDim) {
  return 4 * batch * heads * tokens * tokens * headDim;
}

/** Forward FLOPs of ReHyAt attention, split like rehyat.flops.ReHyAtFlops. */
export function rehyatAttentionFlops(batch, heads, frames, tokensPerFrame, headDim, options = {}) {
  const o = { ...REHYAT_DEFAULTS, ...options };
  const p = tokensPerFrame;
  const d = headDim;
  const perTokenPhi = 2 * (d * o.hiddenDim + o.hiddenDim * o.featureDim);
  let softmax = 0;
  let reading = 0;
  let absorbedFrames = 0;
  for (const chunk of chunkLayout(frames, o.chunkFrames, o.overlapFrames)) {
    const queries = (chunk.frameEnd - chunk.frameStart) * p;
    softmax += 4 * queries * (chunk.windowEnd - chunk.windowStart) * p * d;
    const hasLinear = chunk.windowStart > 0 || (!o.causal && chunk.windowEnd < frames);
    if (hasLinear) reading += queries;
    absorbedFrames = Math.max(absorbedFrames, chunk.windowStart);
  }
  if (!o.causal && reading) absorbedFrames = frames;
  const absorbed = absorbedFrames * p;
  const scale = batch * heads;
  const result = {
    softmax: softmax * scale,
    featureMaps: perTokenPhi * (reading + absorbed) * scale,
    linear: 2 * o.featureDim * (d + 1) * (reading + absorbed) * scale,
  };
  result.total = result.softmax + result.featureMaps + result.linear;
  return result;
}

/**
 * Bytes of one converted block's recurrent state for one sequence (batch item, cond or uncond):
 * S (heads × d' × d) and z (heads × d') in fp32, plus K and V of the To overlap frames
 * (To · P tokens × C channels each) in the activation dtype (`activationBytes`, 2 for bf16/fp16).
 */
export function stateBytesPerBlock({ heads, headDim, featureDim, overlapFrames, tokensPerFrame, activationBytes = 2 }) {
  const channels = heads * headDim;
  return heads * (featureDim * headDim + featureDim) * 4 + overlapFrames * tokensPerFrame * 2 * channels * activationBytes;
}

/** "1.23 TFLOP"-style text. */
export function formatFlops(flops) {
  const units = ["FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"];
  let value = flops;
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toPrecision(3)} ${units[unit]}`;
}

/** "12.3 MiB"-style text. */
export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value.toFixed(0) : value.toPrecision(3)} ${units[unit]}`;
}

/**
 * Every figure the node overlay shows, for one latent size and ReHyAt setting.
 * `blocks` = converted blocks (clamped to the model's); FLOPs are per denoising call of the model
 * (all blocks, one sequence); the state is per sequence (×2 with CFG, ×batch).
 */
export function rehyatFigures({ width, height, length, model = "1.3B", blocks, chunkFrames, overlapFrames, causal,
  hiddenDim, featureDim, activationBytes = 2 }) {
  const spec = WAN21_MODELS[model];
  if (!spec) throw new RangeError(`model must be one of ${Object.keys(WAN21_MODELS).join(", ")}; got ${model}`);
  const o = {
    chunkFrames: chunkFrames ?? REHYAT_DEFAULTS.chunkFrames,
    overlapFrames: overlapFrames ?? REHYAT_DEFAULTS.overlapFrames,
    causal: causal ?? REHYAT_DEFAULTS.causal,
    hiddenDim: hiddenDim ?? REHYAT_DEFAULTS.hiddenDim,
    featureDim: featureDim ?? REHYAT_DEFAULTS.featureDim,
  };
  const grid = wanLatentGrid({ width, height, length });
  const converted = Math.min(Math.max(blocks ?? spec.blocks, 0), spec.blocks);
  const chunks = chunkLayout(grid.frames, o.chunkFrames, o.overlapFrames).length;
  const perBlockSoftmax = softmaxAttentionFlops(1, spec.heads, grid.tokens, WAN21.headDim);
  const perBlockRehyat = rehyatAttentionFlops(1, spec.heads, grid.frames, grid.tokensPerFrame, WAN21.headDim, o).total;
  const softmaxFlops = perBlockSoftmax * spec.blocks;
  const rehyatFlops = perBlockRehyat * converted + perBlockSoftmax * (spec.blocks - converted);
  const perBlockState = o.causal
    ? stateBytesPerBlock({ heads: spec.heads, headDim: WAN21.headDim, featureDim: o.featureDim,
      overlapFrames: o.overlapFrames, tokensPerFrame: grid.tokensPerFrame, activationBytes })
    : null;
  return {
    model, grid, chunks, convertedBlocks: converted, totalBlocks: spec.blocks, ...o,
    softmaxFlops, rehyatFlops, flopRatio: rehyatFlops / softmaxFlops,
    stateBytesPerBlock: perBlockState,
    stateBytes: perBlockState === null ? null : perBlockState * converted,
  };
}

/** The overlay's text lines for `rehyatFigures(...)` output. */
export function figureLines(f) {
  const lines = [
    `${f.grid.frames} latent frames × ${f.grid.tokensPerFrame} tokens → ${f.chunks} chunk${f.chunks === 1 ? "" : "s"}`
      + ` (Tc=${f.chunkFrames}, To=${f.overlapFrames})`,
    `attention per call ${formatFlops(f.rehyatFlops)} vs softmax ${formatFlops(f.softmaxFlops)}`
      + ` (${(100 * f.flopRatio).toFixed(1)} %, ${f.convertedBlocks}/${f.totalBlocks} blocks)`,
  ];
  if (f.stateBytes === null) {
    lines.push("state: none (non-causal: parallel form only)");
  } else {
    lines.push(`state ${formatBytes(f.stateBytesPerBlock)}/block × ${f.convertedBlocks} = ${formatBytes(f.stateBytes)}`
      + " per sequence");
  }
  return lines;
}

/** Text of a `rehyat.chunk_progress` event {node, chunk, chunks, step, steps, order} (1-based chunk/step). */
export function progressLine(detail) {
  if (!detail) return null;
  return `sampling: chunk ${detail.chunk}/${detail.chunks} · step ${detail.step}/${detail.steps} · ${detail.order}`;
}

/**
 * Fraction done (0…1) after a `rehyat.chunk_progress` event. Streaming walks chunk-major (every step of
 * chunk 1, then chunk 2 …); sweep walks step-major (every chunk of step 1, then step 2 …).
 */
export function progressFraction(detail) {
  if (!detail || !detail.chunks || !detail.steps) return 0;
  const done = detail.order === "streaming"
    ? (detail.chunk - 1) * detail.steps + detail.step
    : (detail.step - 1) * detail.chunks + detail.chunk;
  return Math.min(Math.max(done / (detail.chunks * detail.steps), 0), 1);
}
