"""The fidelity table's block-causal oracle and noise ceiling as models the teacher can sample with.

- :func:`block_causal_model`: the teacher with the self-attention of every block replaced by exact
  block-causal softmax (:func:`rehyat.ops.block_causal.block_causal_attention`): each chunk of Tc
  frames attends with exact softmax to every frame up to its own end. It is what a chunk-causal
  student with a perfect φ (and no fine-tune) would generate — the best the causal cases can reach.
- :func:`perturbed_model`: the teacher with relative noise on every weight, ``w·(1 + ε·n)``,
  ``n ~ N(0, 1)`` (the table's noise ceiling: how far a numerically negligible change of the
  teacher already moves its clips after the sampler).

Both return a new :class:`~rehyat.teacher.model.Teacher` (the teacher is unchanged); sample with
``teacher.generate(..., velocity=model.dit)``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..config import require_int, require_real
from ..hybrid import ReHyAtRun
from ..ops.block_causal import block_causal_attention
from ..teacher.model import Teacher


class BlockCausalSoftmax(nn.Module):
    """``self_attn.attention`` of an oracle block: exact softmax over all frames up to the chunk's end."""

    def __init__(self, chunk_frames: int):
        super().__init__()
        require_int("chunk_frames", chunk_frames, low=1)
        self.chunk_frames = chunk_frames

    def forward(self, q: Tensor, k: Tensor, v: Tensor, run: ReHyAtRun | None = None) -> Tensor:
        """``q, k, v`` ``(B, H, N, d)`` laid out on ``run.grid`` → ``(B, H, N, d)``."""
        if run is None:
            raise ValueError("the block-causal oracle needs the forward's frame grid (run); got None")
        return block_causal_attention(
            q, k, v, tokens_per_frame=run.grid.tokens_per_frame, chunk_frames=self.chunk_frames
        )


def block_causal_model(teacher: Teacher, chunk_frames: int) -> Teacher:
    """A copy of ``teacher`` whose every block attends block-causally with exact softmax (chunks of
    ``chunk_frames`` latent frames = pixel frames, the teacher has no temporal compression)."""
    oracle = copy.deepcopy(teacher)
    for block in oracle.dit.blocks:
        block.self_attn.attention = BlockCausalSoftmax(chunk_frames)
    return oracle.eval().requires_grad_(False)


def perturbed_model(teacher: Teacher, relative: float, seed: int = 0) -> Teacher:
    """A copy of ``teacher`` with every DiT weight multiplied by ``1 + relative·n``, ``n ~ N(0, 1)``
    (seeded; the text encoder is unchanged)."""
    require_real("relative", relative, low=0.0, high=1.0)
    noisy = copy.deepcopy(teacher)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in noisy.dit.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.mul_(1 + relative * noise.to(param.device, param.dtype))
    return noisy.eval().requires_grad_(False)
