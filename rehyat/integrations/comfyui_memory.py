"""ComfyUI memory sizing of a ReHyAt-patched Wan: φ's bytes and one chunk's activations, not the clip's.

Duck-typed on ComfyUI's objects: never imports ``comfy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ..streaming.prompt_schedule import schedules_of

PREPARE_SAMPLING_WRAPPER = "prepare_sampling"  # comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
CHUNKED_KEY = "rehyat_chunked"  # transformer_options entry set by the chunked sampler nodes


def phi_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (φ of one block)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def chunk_noise_shape(noise_shape: Any, attention: Any) -> list[int]:
    """The latent shape whose activations one recurrent chunk holds: Tc + To frames (capped at T)."""
    shape = list(noise_shape)
    if len(shape) == 5:
        shape[2] = min(shape[2], attention.chunk_frames + attention.overlap_frames)
    return shape


def prepare_sampling_wrapper(patch_of: Callable[[Any], Any]):
    """A ``prepare_sampling`` wrapper that makes ComfyUI size memory for one chunk (plus the state
    store kept on the device), not the clip, and hands the run's prompt schedules to the patch.

    Active when the patched model runs recurrently (``forward_mode="recurrent"``) or a chunked
    sampler set ``transformer_options["rehyat_chunked"] = {"device_state_bytes": n}``; the state
    bytes are added as the equivalent number of latent frames of ComfyUI's own memory estimate.
    ``patch_of(model_patcher)`` is the ReHyAt patch of the model being sampled (None: not patched).
    """

    def rehyat_prepare_sampling_wrapper(executor, model, noise_shape, *args, **kwargs):
        return _prepare_sampling(patch_of(model), executor, model, noise_shape, *args, **kwargs)

    return rehyat_prepare_sampling_wrapper


def _prepare_sampling(patch: Any, executor, model, noise_shape, *args, **kwargs):
    if patch is not None:  # this run's prompt schedules, found by the model wrapper through the cond uuids
        conds = args[0] if args else kwargs.get("conds")
        patch.prompt_schedules.clear()
        patch.prompt_schedules.update(schedules_of(conds))
    model_options = kwargs.get("model_options") or {}
    chunked = (model_options.get("transformer_options") or {}).get(CHUNKED_KEY)
    if patch is None or (chunked is None and patch.forward_mode != "recurrent") or len(noise_shape) != 5:
        return executor(model, noise_shape, *args, **kwargs)
    shape = chunk_noise_shape(noise_shape, patch.config.attention)
    state_bytes = int((chunked or {}).get("device_state_bytes", 0))
    if state_bytes > 0 and hasattr(model.model, "memory_required"):
        one_frame = [shape[0] * 2, shape[1], 1, *shape[3:]]
        per_frame = max(float(model.model.memory_required(one_frame)), 1.0)
        shape[2] += math.ceil(state_bytes / per_frame)
    return executor(model, shape, *args, **kwargs)
