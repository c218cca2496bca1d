"""Distillation teacher on a ComfyUI Wan2.1 model: capture by object patch, sampling by ComfyUI.

Duck-typed on ComfyUI's objects (this module never imports ``comfy``). :class:`ComfyWanCapture`
builds a *clone* of the ``ModelPatcher`` whose target blocks' ``self_attn`` is replaced (object
patch, active only while the clone is in use) by :class:`ComfyWanCaptureSelfAttention`: it reuses
the original q/k/v/o/norm modules, ComfyUI's own RoPE and attention functions (so the teacher's
numbers are exactly the unpatched model's) and hands ``q, k, v`` and the attention output to the
sink. A ``diffusion_model`` wrapper supplies the frame grid and brackets each forward.

:class:`ComfyWanTeacher` samples through a caller-supplied function (the node passes one that calls
``comfy.sample.sample`` with the user's sampler and scheduler).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..training.capture import CapturedAttention, CaptureSink, check_blocks
from ..training.trajectories import Trajectory
from ..weights import BaseModelInfo
from .comfyui_chunks import latent_grid
from .comfyui_wan import ATTACHMENT_KEY, DIFFUSION_MODEL_WRAPPER, comfy_base_info, comfy_fingerprint

CAPTURE_WRAPPER_KEY = "rehyat_capture"
GRID_KEY = "rehyat_capture_grid"
_SELF_ATTN = "diffusion_model.blocks.{}.self_attn"
_ROLES = ("q", "k", "v", "o", "norm_q", "norm_k")

# sample_fn(patcher, trajectory, on_step) — samples one trajectory with the patched clone and calls
# on_step(i) after the model evaluations of denoising step i.
SampleFn = Callable[[Any, Trajectory, Callable[[int], None]], Any]


class ComfyWanCaptureSelfAttention(nn.Module):
    """Drop-in for ComfyUI's ``WanSelfAttention`` that computes the same output and captures it."""

    def __init__(self, original: nn.Module, block_index: int, capture: ComfyWanCapture):
        super().__init__()
        for role in _ROLES:  # shared modules: identical parameters
            setattr(self, role, getattr(original, role))
        self.num_heads: int = original.num_heads
        self.head_dim: int = original.head_dim
        self.block_index = block_index
        self._capture = [capture]  # a list: not a submodule
        module = sys.modules.get(type(original).__module__)
        self._apply_rope = getattr(module, "apply_rope1", None)
        self._attention = getattr(module, "optimized_attention", None)
        if self._apply_rope is None or self._attention is None:
            raise TypeError(
                f"cannot find apply_rope1 / optimized_attention next to {type(original).__qualname__}: "
                "unsupported ComfyUI version"
            )

    def forward(self, x: Tensor, freqs: Tensor, transformer_options: dict | None = None) -> Tensor:
        """``x`` ``(B, L, C)`` → ``(B, L, C)``, the original numbers."""
        options = transformer_options or {}
        b, s, n, d = x.shape[0], x.shape[1], self.num_heads, self.head_dim
        q = self._apply_rope(self.norm_q(self.q(x)).view(b, s, n, d), freqs)  # (B, L, H, d)
        k = self._apply_rope(self.norm_k(self.k(x)).view(b, s, n, d), freqs)
        v = self.v(x).view(b, s, n, d)
        y = self._attention(
            q.view(b, s, n * d),
            k.view(b, s, n * d),
            v.view(b, s, n * d),
            heads=n,
            transformer_options=options,
        )  # (B, L, H·d)
        capture = self._capture[0]
        if capture.active:
            grid = options.get(GRID_KEY)
            if grid is None:
                raise RuntimeError("captured block called without its frame grid: sample the capture clone")
            heads = (t.view(b, s, n, d).transpose(1, 2) for t in (q, k, v, y))  # (B, H, L, d)
            capture.sink.attention(CapturedAttention(self.block_index, *heads, grid))
        return self.o(y)


class ComfyWanCapture:
    """A capture clone of a ComfyUI Wan ``ModelPatcher`` (the input patcher is never modified).

    Attributes:
        patcher: the clone to sample with.
        blocks, sink, active: see :class:`rehyat.training.capture.AttentionCapture`.
    """

    def __init__(self, model_patcher: Any, blocks: Sequence[int], sink: CaptureSink):
        wan = model_patcher.get_model_object("diffusion_model")
        if not hasattr(wan, "blocks") or not hasattr(wan, "rope_encode"):
            raise TypeError(f"distillation needs a ComfyUI Wan model; got {type(wan).__name__}")
        if getattr(model_patcher, "attachments", {}).get(ATTACHMENT_KEY) is not None:
            raise ValueError("model is ReHyAt-patched: distil from the original (softmax) Wan model")
        self.blocks = check_blocks(blocks, len(wan.blocks))
        self.sink = sink
        self.active = False
        clone = model_patcher.clone()
        for index in self.blocks:
            original = model_patcher.get_model_object(_SELF_ATTN.format(index))
            clone.add_object_patch(
                _SELF_ATTN.format(index), ComfyWanCaptureSelfAttention(original, index, self)
            )
        clone.add_wrapper_with_key(DIFFUSION_MODEL_WRAPPER, CAPTURE_WRAPPER_KEY, self._wrapper)
        self.patcher = clone

    def __enter__(self) -> ComfyWanCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False

    def _wrapper(
        self,
        executor,
        x,
        timestep,
        context,
        clip_fea=None,
        time_dim_concat=None,
        transformer_options=None,
        **kwargs,
    ):
        if time_dim_concat is not None or kwargs.get("reference_latent") is not None:
            raise ValueError("distillation does not support time_dim_concat / reference_latent inputs")
        options = dict(transformer_options or {})
        options[GRID_KEY] = latent_grid(executor.class_obj, x)
        active = self.active
        if active:
            self.sink.begin_forward()
        out = executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)
        if active:
            self.sink.end_forward()
        return out


class ComfyWanTeacher:
    """Distillation teacher of a ComfyUI Wan ``ModelPatcher`` (a :class:`rehyat.training.distill.Teacher`).

    Args:
        model_patcher: the original Wan (softmax).
        sample_fn: samples one trajectory with a patcher (see :data:`SampleFn`).
        latent_shape: ``(C, T, H, W)`` of the generated latent.
        steps: denoising steps per trajectory; ``capture_stride``: capture every k-th step.
        describe_extra: JSON settings that change the trajectories (sampler, scheduler, cfg, prompts …).
        fingerprint: the model's base self-attention fingerprint when the caller has a better one
            (e.g. LoRA-aware); computed from the loaded weights otherwise.
    """

    def __init__(
        self,
        model_patcher: Any,
        sample_fn: SampleFn,
        latent_shape: Sequence[int],
        steps: int,
        capture_stride: int = 1,
        describe_extra: dict[str, Any] | None = None,
        fingerprint: list[float] | None = None,
    ):
        self.model_patcher = model_patcher
        self.sample_fn = sample_fn
        wan = model_patcher.get_model_object("diffusion_model")
        self.num_blocks = len(wan.blocks)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.latent_frames = -(-self.latent_shape[1] // wan.patch_size[0])
        self.steps, self.capture_stride = steps, capture_stride
        self.describe_extra = dict(describe_extra or {})
        self._fingerprint = fingerprint

    def capture(self, blocks: Sequence[int], sink: CaptureSink) -> ComfyWanCapture:
        """An object-patch capture clone."""
        return ComfyWanCapture(self.model_patcher, blocks, sink)

    def sample(self, trajectories: Sequence[Trajectory], capture: ComfyWanCapture) -> None:
        """Sample each trajectory (one at a time: ComfyUI batches a trajectory's cond/uncond rows)."""
        if len(trajectories) > 1:
            raise ValueError("batch_size must be 1 with a ComfyUI teacher (one trajectory per sampling call)")

        def on_step(i: int) -> None:
            capture.active = (i + 1) < self.steps and (i + 1) % self.capture_stride == 0

        for trajectory in trajectories:
            capture.active = True  # step 0 is always captured
            try:
                self.sample_fn(capture.patcher, trajectory, on_step)
            finally:
                capture.active = False

    def base_info(self) -> BaseModelInfo:
        """Width, heads and depth of the Wan model."""
        return comfy_base_info(self.model_patcher)

    def fingerprint(self) -> list[float]:
        """Self-attention fingerprint of the Wan model (cached)."""
        if self._fingerprint is None:
            self._fingerprint = comfy_fingerprint(self.model_patcher)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What the trajectories depend on (part of a run's identity)."""
        digest = hashlib.sha256(repr([round(x, 6) for x in self.fingerprint()]).encode()).hexdigest()[:16]
        return {
            "kind": "comfyui-wan",
            "base": self.base_info().to_dict(),
            "fingerprint_sha256": digest,
            "latent_shape": list(self.latent_shape),
            "steps": self.steps,
            "capture_stride": self.capture_stride,
            **self.describe_extra,
        }
