"""Working memory of one model evaluation of a Wan DiT: softmax, context windows, ReHyAt forms.

"Working" is what an evaluation allocates beyond its resident weights and inputs — the quantity
:func:`rehyat.profiling.measure_runner` measures (peak minus the level before the evaluation). The
terms are the tensors alive together at the peak, per token and batch item (``D`` width, ``F``
FFN width, ``d`` head width, ``e`` activation bytes):

- blocks (:func:`block_activation_bytes`): the block's input (held by the caller) and its updated
  residual ``2D``, plus the larger of the FFN phase (modulated input, hidden, GELU: ``D + 2F``) and
  the attention phase (modulated input, q, k, v, attention output, projection: ``6D``), all ``e``;
  plus the RoPE rotations ``(1, N, 1, d/2, 2, 2)`` in fp32 (``8d`` bytes). Softmax attention is
  counted as a fused (flash / memory-efficient / CPU flash) kernel: no ``N²`` term.
- text (:func:`text_bytes`): the text tokens, their embedding and one block's cross-attention k, v.
- output: the head's output and its unpatchified copy.
- ReHyAt scratch (:func:`rehyat_scratch_bytes`, chunk-sized): φ's hidden layer and features in fp32
  (plus a low-precision copy of the features under bf16 / fp16), and for the recurrent form the
  overlap-plus-chunk key / value windows (:mod:`rehyat.ops.scratch`).
- recurrent states: one evaluation's per-block states, sized by
  :func:`rehyat.streaming.state_store_bytes` (the store's own formula).

The parallel form runs every block on the whole clip (softmax's terms plus the scratch); the
recurrent form runs the whole DiT on one chunk at a time (chunk-sized terms plus the states);
context windows run the model on one window at a time. Checked against CPU measurements in
tests/test_planning_memory.py (tolerance stated there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import FeatureMapConfig, require_int
from ..profiling.cases import ContextWindowCase, ReHyAtCase, SoftmaxCase
from ..profiling.presets import LatentGrid, WanShape
from ..streaming.store import state_store_bytes

ROPE_BYTES_PER_HEAD_CHANNEL = 8  # fp32 2×2 rotation per channel pair: 4 floats per 2 channels
FP32 = 4


def block_activation_bytes(shape: WanShape, tokens: int, *, batch: int, element_size: int) -> int:
    """Peak live activations while the blocks run on ``tokens`` tokens per item (see module doc)."""
    require_int("tokens", tokens, low=0)
    d, f = shape.dim, shape.ffn_dim
    stream = 2 * d  # the block's input (held by the caller) and its updated residual
    phase = max(d + 2 * f, 6 * d)  # FFN: modulated input, hidden, GELU — attention: 6 D-wide tensors
    rope = ROPE_BYTES_PER_HEAD_CHANNEL * shape.head_dim
    return batch * tokens * ((stream + phase) * element_size + rope)


def text_bytes(shape: WanShape, *, batch: int, element_size: int) -> int:
    """Text tokens, their embedding and one block's cross-attention k, v."""
    return batch * shape.text_len * (shape.text_dim + 3 * shape.dim) * element_size


def output_bytes(shape: WanShape, tokens: int, *, batch: int, element_size: int) -> int:
    """The head's output and its unpatchified copy."""
    return 2 * batch * tokens * shape.out_dim * math.prod(shape.patch) * element_size


def rehyat_scratch_bytes(shape: WanShape, case: ReHyAtCase, tokens_per_frame: int, *, batch: int,
                         element_size: int) -> int:
    """Chunk-sized buffers of the ReHyAt op (:mod:`rehyat.ops.scratch`) for one chunk."""
    fm: FeatureMapConfig = case.feature_map
    chunk_tokens = case.chunk_frames * tokens_per_frame
    low_precision = element_size if element_size < FP32 else 0
    phi = shape.num_heads * chunk_tokens * (fm.hidden_dim * FP32 + fm.feature_dim * (FP32 + low_precision))
    window = 0
    if case.form == "recurrent":
        window_tokens = (case.chunk_frames + case.overlap_frames) * tokens_per_frame
        window = 2 * window_tokens * shape.dim * element_size  # "window.k" / "window.v"
    return batch * (phi + window)


def evaluation_state_bytes(shape: WanShape, case: ReHyAtCase, tokens_per_frame: int, *, batch: int,
                           element_size: int, blocks: int | None = None) -> int:
    """One evaluation's recurrent states (every converted block, ``batch`` items)."""
    return state_store_bytes(
        evaluations=1, conditionings=1, batch=batch, blocks=shape.num_layers if blocks is None else blocks,
        heads=shape.num_heads, head_dim=shape.head_dim, feature_dim=case.feature_map.feature_dim,
        overlap_frames=case.overlap_frames, tokens_per_frame=tokens_per_frame,
        overlap_bytes_per_element=element_size)


@dataclass(frozen=True)
class EvaluationMemory:
    """Working memory of one model evaluation, by part (bytes)."""

    blocks: int
    text: int
    output: int
    scratch: int = 0
    states: int = 0

    @property
    def total(self) -> int:
        """All parts."""
        return self.blocks + self.text + self.output + self.scratch + self.states

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form with the total."""
        return {"blocks": self.blocks, "text": self.text, "output": self.output, "scratch": self.scratch,
                "states": self.states, "total": self.total}


def evaluation_memory(shape: WanShape, case: SoftmaxCase | ReHyAtCase | ContextWindowCase, latent: LatentGrid,
                      *, batch: int = 1, element_size: int = 2) -> EvaluationMemory:
    """Working memory of one evaluation of ``case`` on ``latent`` (``batch`` items, e.g. cond + uncond).

    A :class:`ReHyAtCase` of ``form="recurrent"`` runs chunk by chunk (every block converted); of
    ``form="parallel"`` the whole clip at once (its chunk scratch on top).
    """
    require_int("batch", batch, low=1)
    frames, _, _ = latent.token_grid(shape.patch)
    p = latent.tokens_per_frame(shape.patch)
    kw = {"batch": batch, "element_size": element_size}
    text = text_bytes(shape, **kw)
    if isinstance(case, ContextWindowCase):
        window = min(case.window_frames, frames) * p
        return EvaluationMemory(block_activation_bytes(shape, window, **kw), text,
                                output_bytes(shape, window, **kw))
    out = output_bytes(shape, frames * p, **kw)
    if isinstance(case, SoftmaxCase):
        return EvaluationMemory(block_activation_bytes(shape, frames * p, **kw), text, out)
    if not isinstance(case, ReHyAtCase):
        raise TypeError(f"evaluation_memory: unsupported case {case!r}")
    scratch = rehyat_scratch_bytes(shape, case, p, **kw)
    if case.form == "parallel":
        return EvaluationMemory(block_activation_bytes(shape, frames * p, **kw), text, out, scratch)
    chunk = min(case.chunk_frames, frames) * p
    states = evaluation_state_bytes(shape, case, p, **kw)
    return EvaluationMemory(block_activation_bytes(shape, chunk, **kw), text, out, scratch, states)
