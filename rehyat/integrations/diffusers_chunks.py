"""The recurrent forward of a diffusers Wan transformer: the whole DiT chunk by chunk.

:func:`make_recurrent_forward` builds the function that
:func:`~rehyat.integrations.diffusers_wan.patch_diffusers_wan` installs as ``model.forward`` in
``forward_mode="recurrent"``; :class:`DiffusersWanChunks` mirrors diffusers' forward one chunk at a
time for :func:`rehyat.recurrent_dit.run_chunked_forward`.
Duck-typed on diffusers' objects: imports diffusers only when it runs.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ..hybrid import FrameGrid, ReHyAtRun
from ..ops import RecurrentState
from ..recurrent_dit import run_chunked_forward
from .diffusers_rope import RotaryWithRun, wan_frame_grid, wan_rotary_for_frames


def make_recurrent_forward(model: nn.Module, context: Any, chunk_frames: int):
    """The function installed as ``model.forward`` in recurrent mode (holds the model weakly)."""
    model_ref = weakref.ref(model)

    def recurrent(
        model: nn.Module,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return _recurrent_forward(model, context, chunk_frames, hidden_states, timestep,
                                  encoder_hidden_states, encoder_hidden_states_image, return_dict)

    try:  # same PEFT-LoRA "scale" handling of attention_kwargs as diffusers' forward
        from diffusers.utils.peft_utils import apply_lora_scale

        recurrent = apply_lora_scale("attention_kwargs")(recurrent)
    except ImportError:  # pragma: no cover - older diffusers: no LoRA scaling by kwargs
        pass

    def rehyat_recurrent_forward(*args: Any, **kwargs: Any) -> Any:
        """ReHyAt chunk-by-chunk forward (same arguments and output as the model's forward)."""
        target = model_ref()
        if target is None:  # pragma: no cover - the model owns this function
            raise RuntimeError("the patched model no longer exists")
        return recurrent(target, *args, **kwargs)

    # Advertise the model's own signature (pipelines inspect it) without referencing the model.
    rehyat_recurrent_forward.__signature__ = inspect.signature(model.forward)  # type: ignore[attr-defined]
    return rehyat_recurrent_forward


def _recurrent_forward(
    model: nn.Module, context: Any, chunk_frames: int, hidden_states: Tensor, timestep: Tensor,
    encoder_hidden_states: Tensor, encoder_hidden_states_image: Tensor | None, return_dict: bool,
) -> Any:
    """diffusers' Wan forward, computed Tc post-patch frames at a time with per-block ReHyAt states."""
    grid = wan_frame_grid(model, hidden_states)
    chunks = DiffusersWanChunks(model, context, grid, hidden_states, timestep, encoder_hidden_states,
                                 encoder_hidden_states_image)
    states: dict[int, RecurrentState] = {}
    outputs = run_chunked_forward(chunks, grid=grid, num_blocks=len(model.blocks), chunk_frames=chunk_frames,
                                  states_out=states)
    context.last_states = states
    output = torch.cat(outputs, dim=2)  # (B, C_out, T', H', W') with the floored sizes
    if not return_dict:
        return (output,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=output)


class DiffusersWanChunks:
    """:class:`rehyat.recurrent_dit.ChunkedDiT` over a diffusers ``WanTransformer3DModel``.

    Mirrors the model's forward: the condition embeddings (time, text, image) and the head's
    modulation are computed once; everything per token (patch embedding, blocks, head,
    unpatchify) runs on one chunk of frames. Per-token timesteps (Wan2.2 TI2V, ``timestep``
    ``(B, N)``) are sliced per chunk. Gradient checkpointing is not applied here (inference path).
    """

    def __init__(
        self, model: nn.Module, context: Any, grid: FrameGrid, hidden_states: Tensor,
        timestep: Tensor, encoder_hidden_states: Tensor, encoder_hidden_states_image: Tensor | None,
    ):
        self.model, self.context, self.grid = model, context, grid
        self.patch = tuple(model.config.patch_size)
        self.hidden_states = hidden_states  # (B, C, T, H, W)
        per_token = timestep.ndim == 2
        if per_token and timestep.shape[1] != grid.tokens:
            raise ValueError(
                f"per-token timestep has {timestep.shape[1]} entries but the latent has {grid.tokens} tokens"
            )
        seq_len = timestep.shape[1] if per_token else None
        temb, timestep_proj, text, image = model.condition_embedder(
            timestep.flatten() if per_token else timestep, encoder_hidden_states, encoder_hidden_states_image,
            timestep_seq_len=seq_len,
        )
        self.per_token = per_token
        # block modulation: (B, N, 6, C) per token, else (B, 6, C)
        self.timestep_proj = timestep_proj.unflatten(2 if per_token else 1, (6, -1))
        self.context_tokens = text if image is None else torch.cat([image, text], dim=1)  # (B, L, C)
        table = model.scale_shift_table.to(temb.device)  # (1, 2, C)
        if per_token:  # temb (B, N, C) -> shift, scale (B, N, C)
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            self.shift, self.scale = shift.squeeze(2), scale.squeeze(2)
        else:  # temb (B, C) -> shift, scale (B, 1, C)
            self.shift, self.scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        self._rope_key: tuple[int, int] | None = None
        self._rope: tuple[Tensor, Tensor] | None = None

    def _tokens(self, f0: int, f1: int) -> slice:
        p = self.grid.tokens_per_frame
        return slice(f0 * p, f1 * p)

    def _rotary(self, f0: int, f1: int) -> tuple[Tensor, Tensor]:
        """RoPE of the chunk at its absolute frame positions, cached across the blocks of a chunk."""
        if self._rope_key != (f0, f1):
            self._rope = wan_rotary_for_frames(self.model.rope, f0, f1, self.grid.height, self.grid.width)
            self._rope_key = (f0, f1)
        return self._rope

    def embed(self, f0: int, f1: int) -> Tensor:
        """Patch embedding of post-patch frames ``[f0, f1)`` → tokens ``(B, n·P, C)``."""
        p_t = self.patch[0]
        x = self.hidden_states[:, :, f0 * p_t:f1 * p_t]  # (B, C_in, n·p_t, H, W)
        x = self.model.patch_embedding(x)  # (B, C, n, H', W')
        return x.flatten(2).transpose(1, 2).contiguous()  # (B, n·P, C)

    def run_block(self, index: int, tokens: Tensor, f0: int, f1: int, run: ReHyAtRun) -> Tensor:
        """Block ``index`` on the chunk's tokens ``(B, n·P, C)``."""
        temb = self.timestep_proj[:, self._tokens(f0, f1)] if self.per_token else self.timestep_proj
        rotary = RotaryWithRun(self._rotary(f0, f1), run)
        return self.model.blocks[index](tokens, self.context_tokens, temb, rotary)

    def finish_chunk(self, tokens: Tensor, f0: int, f1: int) -> Tensor:
        """Head (norm, modulation, projection) and unpatchify → ``(B, C_out, n·p_t, H', W')``."""
        model = self.model
        rows = self._tokens(f0, f1)
        shift = self.shift[:, rows] if self.per_token else self.shift
        scale = self.scale[:, rows] if self.per_token else self.scale
        shift, scale = shift.to(tokens.device), scale.to(tokens.device)
        x = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        x = model.proj_out(x)  # (B, n·P, C_out·p_t·p_h·p_w)
        p_t, p_h, p_w = self.patch
        n, h, w = f1 - f0, self.grid.height, self.grid.width
        x = x.reshape(x.shape[0], n, h, w, p_t, p_h, p_w, -1)  # (B, n, h, w, p_t, p_h, p_w, C_out)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, n, p_t, h, p_h, w, p_w)
        return x.reshape(x.shape[0], x.shape[1], n * p_t, h * p_h, w * p_w)
