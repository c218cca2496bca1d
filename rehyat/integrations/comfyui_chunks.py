"""The recurrent chunk adapter of a ComfyUI Wan model: the whole DiT chunk by chunk.

:class:`ComfyWanChunks` mirrors ComfyUI's ``WanModel.forward_orig`` one chunk at a time for
:func:`rehyat.recurrent_dit.run_chunked_forward`; :func:`recurrent_forward` runs it with fresh
states (``forward_mode="recurrent"``, the sweep order) or continuing a streaming run's state store.
Model inputs it cannot honour are refused by name (:func:`check_recurrent_inputs`), never dropped.
Duck-typed on ComfyUI's objects: never imports ``comfy``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..hybrid import FrameGrid, ReHyAtRun
from ..models.wan_layers import pad_to_patch, sinusoidal_embedding
from ..ops import RecurrentState
from ..recurrent_dit import run_chunked_forward
from ..streaming.driver import StreamContext
from ..streaming.prompt_schedule import SCHEDULES_OPTION, schedule_picks, scheduled_context

RUN_KEY = "rehyat_run"  # transformer_options entry read by the attention layers


def latent_grid(wan: nn.Module, latent: Tensor) -> FrameGrid:
    """Token grid of a latent ``(B, C, T, H, W)`` after Wan's patching (padded like ComfyUI)."""
    pt, ph, pw = wan.patch_size
    t, h, w = latent.shape[2:]
    return FrameGrid(math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))


# Model inputs the recurrent forward understands; anything else is refused by name, never dropped.
_RECURRENT_INPUTS = ("clip_fea", "control", "reference_latent")


def check_recurrent_inputs(wan: nn.Module, inputs: Mapping[str, Any]) -> None:
    """Refuse model inputs the recurrent forward cannot honour, naming them and what to do."""
    if hasattr(wan, "vace_blocks"):
        raise ValueError(
            "ReHyAt's chunked forward does not support VACE models (their control blocks attend over all "
            "frames): use a plain Wan2.1 T2V / I2V model"
        )
    unknown = sorted(k for k, v in inputs.items() if k not in _RECURRENT_INPUTS and v is not None)
    if unknown:
        raise ValueError(
            f"ReHyAt's chunked forward does not support the model input(s) {unknown} (set by another node "
            "or the conditioning); remove them, or run the patched model in parallel mode"
        )
    if inputs.get("control") is not None:
        raise ValueError(
            "ReHyAt's chunked forward does not support ControlNet-style control inputs on Wan: remove the "
            "control from the conditioning"
        )


class ComfyWanChunks:
    """:class:`rehyat.recurrent_dit.ChunkedDiT` over a ComfyUI ``WanModel`` (mirrors ``forward_orig``).

    ``x`` holds latent frames ``[frame_offset, frame_offset + T)`` of the clip; the chunk methods take
    absolute frame indices (RoPE positions).
    """

    def __init__(self, wan: nn.Module, x: Tensor, timestep: Tensor, context: Tensor, clip_fea: Tensor | None,
                 options: dict, grid: FrameGrid, frame_offset: int = 0):
        if timestep.ndim != 1:
            raise ValueError("the recurrent forward needs one timestep per batch item (shape (B,))")
        self.wan, self.options, self.grid, self.frame_offset = wan, options, grid, frame_offset
        self.latent_hw = x.shape[3:]
        self.x = pad_to_patch(x, wan.patch_size)  # (B, C, T, H, W) — the latent is small
        self.rope_scale_t = (options.get("rope_options") or {}).get("scale_t", 1.0)
        e = wan.time_embedding(sinusoidal_embedding(wan.freq_dim, timestep.flatten()).to(dtype=x.dtype))
        self.e = e.reshape(timestep.shape[0], -1, e.shape[-1])  # (B, 1, C)
        self.e0 = wan.time_projection(self.e).unflatten(2, (6, wan.dim))  # (B, 1, 6, C)
        self.context_img_len = clip_fea.shape[-2] if clip_fea is not None else None
        self._image_context = None
        if clip_fea is not None and wan.img_emb is not None:
            self._image_context = wan.img_emb(clip_fea)  # (B, L_img, C)
        self._text = context  # (B, L, C_text): the call's cross-attention input
        self._schedules = options.get(SCHEDULES_OPTION) or ()
        self._contexts: dict[tuple[int, ...], Tensor] = {}
        self.context = self._embed(context)  # (B, L_img + L, C)

    def _embed(self, text: Tensor) -> Tensor:
        context = self.wan.text_embedding(text)
        if self._image_context is not None:
            context = torch.concat([self._image_context, context], dim=1)
        return context

    def context_for(self, frame_start: int) -> Tensor:
        """The embedded cross-attention input of the chunk starting at latent frame ``frame_start``
        (a prompt schedule picks each conditioning's entry; embedded once per distinct pick)."""
        picks = schedule_picks(self._schedules, frame_start)  # every block of a chunk asks: no tensors here
        if all(p <= 0 for p in picks):
            return self.context
        if picks not in self._contexts:
            text, _ = scheduled_context(self._text, self._schedules, frame_start)
            self._contexts[picks] = self._embed(text)
        return self._contexts[picks]

    def embed(self, f0: int, f1: int) -> Tensor:
        x = self.x[:, :, f0 - self.frame_offset:f1 - self.frame_offset]
        x = self.wan.patch_embedding(x.float()).to(x.dtype)  # (B, C, n, H', W')
        return x.flatten(2).transpose(1, 2)  # (B, n·P, C)

    def run_block(self, index: int, tokens: Tensor, f0: int, f1: int, run: ReHyAtRun) -> Tensor:
        h, w = self.latent_hw
        freqs = self.wan.rope_encode(f1 - f0, h, w, t_start=f0 * self.rope_scale_t, device=tokens.device,
                                     dtype=tokens.dtype, transformer_options=self.options)
        options = {**self.options, RUN_KEY: run}
        return self.wan.blocks[index](tokens, e=self.e0, freqs=freqs, context=self.context_for(f0),
                                      context_img_len=self.context_img_len, transformer_options=options)

    def finish_chunk(self, tokens: Tensor, f0: int, f1: int) -> Tensor:
        out = self.wan.head(tokens, self.e)
        return self.wan.unpatchify(out, (f1 - f0, self.grid.height, self.grid.width))  # (B, C, n, H, W)


def recurrent_forward(wan, chunk_frames: int, x: Tensor, timestep, context, clip_fea, options: dict,
                      stream: StreamContext | None) -> Tensor:
    """The DiT chunk by chunk: fresh states (recurrent mode, sweep) or continuing the store (streaming)."""
    if options.get("patches_replace", {}).get("dit") or options.get("patches", {}).get("double_block"):
        raise ValueError(
            "the recurrent ReHyAt forward cannot run together with other DiT block patches "
            "(patches_replace['dit'] / patches['double_block']): use forward_mode='parallel'"
        )
    if stream is not None and stream.latent_hw is not None and tuple(x.shape[3:]) != tuple(stream.latent_hw):
        raise ValueError(
            f"the chunked sampler got a model call on a {tuple(x.shape[3:])} latent area inside a "
            f"{tuple(stream.latent_hw)} latent (area conditioning?): remove area / mask conditioning"
        )
    grid = latent_grid(wan, x)
    streaming = stream is not None and stream.order == "streaming"
    offset = stream.frame_offset if streaming else 0
    keys, states = [], None
    if streaming:
        if stream.store is None:
            raise ValueError("a streaming model call needs the state store of its sampler run")
        cond_or_uncond = list(options.get("cond_or_uncond") or [0])
        if x.shape[0] % len(cond_or_uncond):
            raise ValueError(
                f"model batch {x.shape[0]} is not a multiple of its {len(cond_or_uncond)} conditionings")
        keys = stream.keys_for_call(cond_or_uncond, x.shape[0] // len(cond_or_uncond))
        states = stream.store.load(keys, frame_offset=offset, device=x.device)
    on_chunk = stream.on_forward_chunk if stream is not None and not streaming else None
    chunks = ComfyWanChunks(wan, x, timestep, context, clip_fea, options, grid, frame_offset=offset)
    states_out: dict[int, RecurrentState] | None = {} if streaming and stream.save_states else None
    outputs = run_chunked_forward(
        chunks, grid=grid, num_blocks=len(wan.blocks), chunk_frames=chunk_frames, frame_offset=offset,
        states=states, states_out=states_out, on_chunk=on_chunk,
    )
    if states_out is not None:
        stream.store.save(keys, states_out)
    t, h, w = x.shape[2:]
    return torch.cat(outputs, dim=2)[:, :, :t, :h, :w]
