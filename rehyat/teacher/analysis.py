"""How temporal the teacher's attention is: softmax attention mass by frame distance.

For each block, the teacher's softmax weights are summed per (query frame, key frame) pair and
averaged over queries, giving a ``(T, T)`` frame-to-frame matrix whose rows sum to 1. From it:

- ``beyond_window``: the mass on keys at least ``Tc + To`` frames before or after the query frame —
  attention a local window of that span cannot see at all;
- ``past_outside_softmax``: the mass on past frames outside the query's ReHyAt softmax window
  (chunk + ``To`` overlap frames) — what causal ReHyAt's linear part has to carry;
- ``future_outside_chunk``: the mass on frames after the query's chunk — what a causal conversion
  drops (the teacher is bidirectional).

Measured on noised generator clips (σ drawn over the sampling range), never on stored data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..training.flow_matching import noised_sample, shift_sigma
from .model import Teacher, pixels_to_latent
from .shapes import generate_clip


def frame_attention_matrix(q: Tensor, k: Tensor, frames: int) -> Tensor:
    """Mean softmax mass from each query frame to each key frame: ``(T, T)``, rows sum to 1.

    ``q, k`` are ``(B, H, N, d)`` with ``N = frames · P`` frame-major tokens; computed one head
    at a time (a ``(N, N)`` matrix in memory).
    """
    b, h, n, d = q.shape
    p = n // frames
    total = torch.zeros(frames, frames, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            weights = torch.softmax((q[bi, hi].float() @ k[bi, hi].float().T) / d**0.5, dim=-1)  # (N, N)
            per_frame = weights.reshape(frames, p, frames, p).sum(dim=3).mean(dim=1)  # (Tq, Tk)
            total += per_frame.double()
    return total / (b * h)


def window_shares(matrix: Tensor, chunk_frames: int, overlap_frames: int) -> dict[str, float]:
    """The three shares of the module docstring from a frame-to-frame mass matrix ``(T, T)``."""
    frames = matrix.shape[0]
    fq = torch.arange(frames)[:, None]
    fk = torch.arange(frames)[None, :]
    chunk_start = (fq // chunk_frames) * chunk_frames
    chunk_end = torch.clamp(chunk_start + chunk_frames, max=frames)
    window_start = torch.clamp(chunk_start - overlap_frames, min=0)
    far = (fq - fk).abs() >= chunk_frames + overlap_frames
    past_outside = fk < window_start
    future = fk >= chunk_end
    mean = lambda mask: float((matrix * mask).sum() / frames)  # noqa: E731 — rows sum to 1
    return {
        "beyond_window": mean(far),
        "past_outside_softmax": mean(past_outside),
        "future_outside_chunk": mean(future),
    }


@torch.no_grad()
def attention_temporal_structure(
    teacher: Teacher,
    *,
    chunk_frames: int,
    overlap_frames: int,
    seeds: tuple[int, ...] = (11, 12, 13, 14),
    sigmas: tuple[float, ...] = (0.3, 0.6, 0.9),
    frames: int | None = None,
) -> dict[str, Any]:
    """Per block and overall: the shares of :func:`window_shares`, and the mass by frame distance.

    Each seed's generator clip (with its prompt) is noised to each σ (after the sampling shift)
    and run through the teacher; hooks on ``blocks.N.self_attn.attention`` see q and k.
    """
    frames = frames or teacher.config.clip.frames
    blocks = teacher.dit.blocks
    sums = [torch.zeros(frames, frames, dtype=torch.float64) for _ in blocks]
    captured: dict[int, Tensor] = {}
    handles = [
        block.self_attn.attention.register_forward_hook(
            lambda m, args, out, i=i: captured.__setitem__(
                i, frame_attention_matrix(args[0], args[1], frames)
            )
        )
        for i, block in enumerate(blocks)
    ]
    try:
        count = 0
        for seed in seeds:
            clip = generate_clip(seed, teacher.config.clip, frames=frames)
            x0 = pixels_to_latent(clip.pixels[None], teacher.config.fold)
            context = teacher.encode([clip.prompt])
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            for sigma in sigmas:
                s = shift_sigma(torch.tensor([sigma]), teacher.config.sampling.shift)
                teacher.dit(noised_sample(x0, noise, s), s * 1000, context)
                for i in range(len(blocks)):
                    sums[i] += captured[i]
                count += 1
    finally:
        for handle in handles:
            handle.remove()
    per_block = []
    for matrix in sums:
        matrix = matrix / count
        by_distance = [
            float(torch.diagonal(matrix, offset).sum() / frames) for offset in range(-(frames - 1), frames)
        ]
        per_block.append(
            {**window_shares(matrix, chunk_frames, overlap_frames), "mass_by_frame_offset": by_distance}
        )  # offset = key frame − query frame
    overall = {
        key: sum(b[key] for b in per_block) / len(per_block)
        for key in ("beyond_window", "past_outside_softmax", "future_outside_chunk")
    }
    return {
        "frames": frames,
        "chunk_frames": chunk_frames,
        "overlap_frames": overlap_frames,
        "seeds": list(seeds),
        "sigmas": list(sigmas),
        "mean_over_blocks": overall,
        "blocks": per_block,
    }
