"""The pure-PyTorch teacher: a softmax :class:`rehyat.models.wan.WanDiT` sampled with Euler ancestral.

Used by the ``distill`` command (no ComfyUI needed). Conditional and unconditional rows run in one
batched forward, so every captured forward carries ``2 × trajectories`` rows (``cfg = 1``: only the
conditional rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..weights import BaseModelInfo, fingerprint_module
from .capture import CaptureSink, WanDiTCapture
from .options import TeacherSampling
from .runs import tensors_digest
from .sampling import draw, euler_ancestral_step, flow_sigmas, trajectory_noise
from .trajectories import Trajectory


class WanDiTTeacher:
    """Samples trajectories of a softmax ``WanDiT`` and captures its target blocks.

    Args:
        model: the original Wan (every block softmax), on its compute device, eval mode.
        conditionings: text features ``(L_i, text_dim)`` per prompt.
        negative: the unconditional text features ``(L, text_dim)``.
        latent_shape: ``(C, T, H, W)`` of the latent being generated.
        sampling: steps, cfg, shift, eta, capture stride.
    """

    def __init__(
        self,
        model: nn.Module,
        conditionings: Sequence[Tensor],
        negative: Tensor,
        latent_shape: Sequence[int],
        sampling: TeacherSampling,
    ):
        if not conditionings:
            raise ValueError("conditionings must hold at least one prompt's text features")
        text_dim = model.config.text_dim
        for i, cond in enumerate([*conditionings, negative]):
            if cond.ndim != 2 or cond.shape[-1] != text_dim:
                what = f"conditioning {i}" if i < len(conditionings) else "negative conditioning"
                raise ValueError(f"{what} must be (L, {text_dim}) text features; got {tuple(cond.shape)}")
        self.model = model
        self.conditionings = list(conditionings)
        self.negative = negative
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.sampling = sampling
        self.num_blocks = len(model.blocks)
        self.latent_frames = -(-self.latent_shape[1] // model.config.patch_size[0])  # T after patching
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def capture(self, blocks: Sequence[int], sink: CaptureSink) -> WanDiTCapture:
        """A hook-based capture of ``blocks`` into ``sink``."""
        return WanDiTCapture(self.model, blocks, sink)

    def base_info(self) -> BaseModelInfo:
        """Width, heads and depth of the teacher."""
        cfg = self.model.config
        return BaseModelInfo(dim=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers)

    def fingerprint(self) -> list[float]:
        """The teacher's self-attention fingerprint (for the φ file)."""
        return fingerprint_module(self.model, "wan", num_layers=self.num_blocks)

    def describe(self) -> dict[str, Any]:
        """What the trajectories depend on (part of the run identity)."""
        return {
            "kind": "wandit",
            "config": self.model.config.to_dict(),
            "latent_shape": list(self.latent_shape),
            "sampling": self.sampling.to_dict(),
            "prompts": len(self.conditionings),
            "conditioning_sha256": tensors_digest([*self.conditionings, self.negative]),
            "fingerprint": [round(x, 6) for x in self.fingerprint()[:12]],
        }

    @torch.no_grad()
    def sample(self, trajectories: Sequence[Trajectory], capture: WanDiTCapture) -> Tensor:
        """Sample ``trajectories`` together; captured steps run with ``capture.active``. Returns x0."""
        s = self.sampling
        generators = trajectory_noise([t.seed for t in trajectories])
        probe = torch.empty((), device=self.device, dtype=torch.float32)
        x = draw(generators, self.latent_shape, probe)  # (B, C, T, H, W) fp32, σ = 1
        context = self._context(trajectories)
        captured = set(s.captured_steps())
        sigmas = flow_sigmas(s.steps, s.shift).tolist()
        for i in range(s.steps):
            capture.active = i in captured
            denoised = self._denoise(x, sigmas[i], context, len(trajectories))
            capture.active = False
            noise = draw(generators, self.latent_shape, x) if s.eta > 0 and sigmas[i + 1] > 0 else None
            x = euler_ancestral_step(x, denoised, sigmas[i], sigmas[i + 1], noise, s.eta)
        return x

    def _context(self, trajectories: Sequence[Trajectory]) -> Tensor:
        """Text features of the batch's rows: conditional rows, then (cfg ≠ 1) unconditional ones.

        Prompts of different lengths are zero-padded to the longest (umT5 features are zero past the
        prompt, as Wan pads them).
        """
        rows = [self.conditionings[t.conditioning] for t in trajectories]
        if self.sampling.cfg != 1.0:
            rows += [self.negative] * len(trajectories)
        length = max(r.shape[0] for r in rows)
        padded = [torch.cat([r, r.new_zeros(length - r.shape[0], r.shape[1])]) for r in rows]
        return torch.stack(padded).to(device=self.device, dtype=self.dtype)  # (rows, L, text_dim)

    def _denoise(self, x: Tensor, sigma: float, context: Tensor, batch: int) -> Tensor:
        """Guided x0 estimate: ``x − σ·v``, ``v = v_u + cfg·(v_c − v_u)``."""
        guided = self.sampling.cfg != 1.0
        x_in = torch.cat([x, x]) if guided else x
        timestep = torch.full((x_in.shape[0],), sigma * 1000.0, device=self.device, dtype=torch.float32)
        v = self.model(x_in.to(self.dtype), timestep, context).float()
        if guided:
            v_cond, v_uncond = v[:batch], v[batch:]
            v = v_uncond + self.sampling.cfg * (v_cond - v_uncond)
        return x - sigma * v
