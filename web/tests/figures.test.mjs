// Node test runner: node --test web/tests/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  chunkLayout, figureLines, formatBytes, formatFlops, progressFraction, progressLine, rehyatAttentionFlops,
  rehyatFigures, softmaxAttentionFlops, stateBytesPerBlock, wanLatentGrid,
} from "../lib/figures.js";

test("Wan2.1 latent grid: /8 spatial, /4 temporal +1, 2×2 patches", () => {
  assert.deepEqual(wanLatentGrid({ width: 832, height: 480, length: 81 }),
    { frames: 21, latentWidth: 104, latentHeight: 60, tokensPerFrame: 52 * 30, tokens: 21 * 1560 });
  // odd latent sizes are padded to whole patches, as ComfyUI does
  assert.equal(wanLatentGrid({ width: 72, height: 40, length: 1 }).tokensPerFrame, 5 * 3);
  assert.throws(() => wanLatentGrid({ width: 4, height: 64, length: 9 }), /width must be an integer ≥ 8/);
  assert.throws(() => wanLatentGrid({ width: 64, height: 64, length: 0 }), /length/);
});

test("chunk layout: windows start To frames early and the last chunk may be partial", () => {
  const chunks = chunkLayout(7, 3, 1);
  assert.deepEqual(chunks.map((c) => [c.frameStart, c.frameEnd, c.windowStart, c.windowEnd]),
    [[0, 3, 0, 3], [3, 6, 2, 6], [6, 7, 5, 7]]);
  assert.equal(chunkLayout(21, 3, 1).length, 7);
  assert.throws(() => chunkLayout(5, 0, 1), /chunk_frames must be an integer ≥ 1/);
  assert.throws(() => chunkLayout(5, 2, -1), /overlap_frames/);
});

test("one chunk covering every frame costs exactly softmax", () => {
  const f = rehyatAttentionFlops(1, 2, 4, 6, 8, { chunkFrames: 4, overlapFrames: 1 });
  assert.equal(f.softmax, softmaxAttentionFlops(1, 2, 24, 8));
  assert.equal(f.featureMaps, 0);
  assert.equal(f.linear, 0);
});

test("hand-computed ReHyAt FLOPs (T=3, Tc=1, To=0, P=1, d=2, d'=h=2, one head)", () => {
  // softmax: 3 chunks × 4·1·1·1·2; linear set readers: chunks 1, 2; absorbed frames: 2
  const f = rehyatAttentionFlops(1, 1, 3, 1, 2, { chunkFrames: 1, overlapFrames: 0, hiddenDim: 2, featureDim: 2 });
  assert.equal(f.softmax, 24);
  assert.equal(f.featureMaps, 2 * (2 * 2 + 2 * 2) * (2 + 2));
  assert.equal(f.linear, 2 * 2 * 3 * (2 + 2));
  assert.equal(f.total, f.softmax + f.featureMaps + f.linear);
});

test("state per block: fp32 S and z plus the overlap frames' K and V", () => {
  const bytes = stateBytesPerBlock({ heads: 12, headDim: 128, featureDim: 256, overlapFrames: 1, tokensPerFrame: 1560 });
  assert.equal(bytes, 12 * (256 * 128 + 256) * 4 + 1 * 1560 * 2 * 1536 * 2);
  assert.equal(stateBytesPerBlock({ heads: 1, headDim: 2, featureDim: 2, overlapFrames: 0, tokensPerFrame: 9 }), 24);
});

test("figures: FLOP ratio falls as clips grow; state does not grow with length", () => {
  const short = rehyatFigures({ width: 832, height: 480, length: 81 });
  const long = rehyatFigures({ width: 832, height: 480, length: 321 });
  assert.equal(short.chunks, 7);
  assert.ok(long.flopRatio < short.flopRatio && short.flopRatio < 1);
  assert.equal(long.stateBytes, short.stateBytes);
  assert.equal(short.stateBytes, short.stateBytesPerBlock * 30);
  const none = rehyatFigures({ width: 832, height: 480, length: 81, blocks: 0 });
  assert.equal(none.rehyatFlops, none.softmaxFlops);
  assert.equal(rehyatFigures({ width: 832, height: 480, length: 81, blocks: 99 }).convertedBlocks, 30);
  assert.equal(rehyatFigures({ width: 64, height: 64, length: 9, causal: false }).stateBytes, null);
  assert.throws(() => rehyatFigures({ width: 64, height: 64, length: 9, model: "7B" }), /model must be one of/);
});

test("overlay text", () => {
  const lines = figureLines(rehyatFigures({ width: 832, height: 480, length: 81 }));
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^21 latent frames × 1560 tokens → 7 chunks \(Tc=3, To=1\)$/);
  assert.match(lines[1], /^attention per call .*FLOP vs softmax .*FLOP \(\d+\.\d %, 30\/30 blocks\)$/);
  assert.match(lines[2], /^state .*MiB\/block × 30 = .*MiB per sequence$/);
  assert.match(figureLines(rehyatFigures({ width: 64, height: 64, length: 9, causal: false }))[2], /non-causal/);
  assert.equal(formatFlops(999), "999 FLOP");
  assert.equal(formatFlops(1.234e12), "1.23 TFLOP");
  assert.equal(formatBytes(1536), "1.50 KiB");
  assert.equal(formatBytes(100), "100 B");
});

test("chunk progress (1-based chunk and step): text and fraction for both orders", () => {
  const streaming = { node: "5", chunk: 2, chunks: 4, step: 1, steps: 2, order: "streaming" };
  assert.equal(progressLine(streaming), "sampling: chunk 2/4 · step 1/2 · streaming");
  assert.equal(progressFraction(streaming), 3 / 8);
  assert.equal(progressFraction({ ...streaming, order: "sweep" }), 2 / 8);
  assert.equal(progressFraction({ ...streaming, chunk: 4, step: 2 }), 1);
  assert.equal(progressFraction({ ...streaming, order: "sweep", chunk: 4, step: 2 }), 1);
  assert.equal(progressLine(null), null);
});
