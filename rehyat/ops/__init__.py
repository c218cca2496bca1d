"""ReHyAt attention op: one public entry, three forms with the same signature.

- :func:`rehyat_attention_naive` — dense fp64 reference (tests only).
- :func:`rehyat_attention_parallel` — chunked, O(N), differentiable: training and fast inference.
- :func:`rehyat_attention_recurrent` / :func:`rehyat_step` — chunk-wise RNN with an explicit
  :class:`RecurrentState`, memory independent of the number of frames (causal only).

Precision: fp32 activations run everything in fp32. bf16 / fp16 activations (GPU) run φ's MLP,
the state update ``φkᵀ[v, 1]`` and the readout ``φq·[S, z]`` as matmuls in the activations' dtype
(fp32 accumulation), while S and z stay fp32 in the state and the final normalisation is fp32 with
one rounding; see :mod:`rehyat.ops.kernels` for the split and tests/test_ops_precision.py for the
measured bounds (≈ 0.7 units of roundoff rms, ≤ 1.5 asserted).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .layout import MODES, Chunk, chunk_layout, validate_inputs
from .naive import rehyat_attention_naive
from .parallel import rehyat_attention_parallel
from .recurrent import rehyat_attention_recurrent, rehyat_step
from .scratch import Scratch
from .state import RecurrentState

__all__ = [
    "MODES",
    "Chunk",
    "RecurrentState",
    "Scratch",
    "chunk_layout",
    "rehyat_attention",
    "rehyat_attention_naive",
    "rehyat_attention_parallel",
    "rehyat_attention_recurrent",
    "rehyat_step",
    "validate_inputs",
]

_FORMS = {
    "parallel": rehyat_attention_parallel,
    "recurrent": rehyat_attention_recurrent,
    "naive": rehyat_attention_naive,
}


def rehyat_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    phi_q: Callable[[Tensor], Tensor],
    phi_k: Callable[[Tensor], Tensor],
    tokens_per_frame: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    mode: str = "parallel",
    scale: float | None = None,
    initial_state: RecurrentState | None = None,
    output_final_state: bool = False,
    scratch: Scratch | None = None,
) -> Tensor | tuple[Tensor, RecurrentState]:
    """Recurrent hybrid attention over frame-major video tokens.

    Frames are cut into chunks of ``chunk_frames`` (Tc) frames; chunk t = frames
    ``[t·Tc, min((t+1)·Tc, T))``. Its queries attend with softmax to frames
    ``[max(t·Tc − To, 0), min((t+1)·Tc, T))`` and with linear attention (feature maps φq, φk) to
    frames ``[0, max(t·Tc − To, 0))`` (causal) or to every frame outside the softmax set
    (non-causal). Output: ``y_i = (o_soft_i + φq(q_i)·S_i) / (1 + φq(q_i)·z_i)``, where ``o_soft`` is
    the softmax part normalised with its own row-wise log-sum-exp (the paper's stabiliser c), and
    ``S_i = Σ_{j∈L_i} φk(k_j) v_jᵀ``, ``z_i = Σ_{j∈L_i} φk(k_j)`` accumulate in fp32.

    Args:
        q, k, v: ``(B, H, N, d)``, ``N = T · tokens_per_frame``, same dtype and device.
        phi_q, phi_k: callables mapping ``(B, H, n, d)`` to non-negative ``(B, H, n, d')`` (checked
            only with ``REHYAT_CHECK_FEATURES=1``: see :data:`rehyat.ops.layout.CHECK_FEATURE_SIGN`).
        tokens_per_frame: P, tokens per latent frame (≥ 1).
        chunk_frames: Tc ≥ 1. ``Tc ≥ T`` degenerates to full softmax attention.
        overlap_frames: To ≥ 0 (``To ≥ Tc`` is allowed).
        causal: see above; ``mode="recurrent"`` requires it.
        mode: ``"parallel"`` (default), ``"recurrent"`` or ``"naive"``; all give the same numbers.
        scale: softmax scale, a finite number > 0; default ``1/√d``.
        initial_state: continue after frames summarised by this state (causal only).
        output_final_state: also return the state after the last frame.
        scratch: reusable inference buffers; share one :class:`~rehyat.ops.scratch.Scratch`
            across calls (e.g. the blocks of one model forward) to keep them warm. Ignored under
            autograd and by the naive form.

    Returns:
        ``(B, H, N, d)`` in the input dtype, or ``(output, RecurrentState)`` when
        ``output_final_state``. Non-finite input propagates alike in every form: a NaN / inf query
        gives a NaN output row, a NaN key or value gives NaN wherever it is attended to (softmax
        window or linear set) and nowhere else; nothing is turned into 0.
    """
    if mode not in _FORMS:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return _FORMS[mode](
        q, k, v, phi_q=phi_q, phi_k=phi_k, tokens_per_frame=tokens_per_frame,
        chunk_frames=chunk_frames, overlap_frames=overlap_frames, causal=causal, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state, scratch=scratch,
    )
