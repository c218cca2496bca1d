"""Geometry of diffusers' Wan transformer: its frame grid, its RoPE tables per frame range, and the
rotation the ReHyAt processor applies with them.

:class:`RotaryWithRun` is how the frame grid travels with a call: diffusers hands the RoPE tables to
every block as ``rotary_emb``; the tuple also carries the forward's :class:`~rehyat.hybrid.ReHyAtRun`.
Duck-typed on diffusers' objects: never imports diffusers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..hybrid import FrameGrid, ReHyAtRun


class RotaryWithRun(tuple):
    """diffusers' RoPE tables ``(freqs_cos, freqs_sin)`` plus the forward's :class:`ReHyAtRun` (``.run``).

    A plain tuple to diffusers (it unpacks and passes it on unchanged); the ReHyAt processors read
    the frame grid and run mode from ``.run``.
    """

    run: ReHyAtRun

    def __new__(cls, tables: tuple[Tensor, Tensor], run: ReHyAtRun) -> RotaryWithRun:
        obj = super().__new__(cls, tables)
        obj.run = run
        return obj


def apply_wan_rotary(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` by diffusers' Wan RoPE tables.

    Args:
        x: ``(B, N, H, d)``.
        freqs_cos, freqs_sin: ``(1, N, 1, d)`` as returned by ``WanRotaryPosEmbed`` (each angle's
            cos / sin repeated twice, so the even / odd columns hold one value per pair).

    Returns:
        ``(B, N, H, d)`` in ``x``'s dtype: pair i becomes ``(x1 cos − x2 sin, x1 sin + x2 cos)``.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, H, d/2) each
    cos = freqs_cos[..., 0::2]  # (1, N, 1, d/2)
    sin = freqs_sin[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, N, H, d/2, 2)
    return rotated.flatten(-2).to(x.dtype)


def wan_frame_grid(model: nn.Module, hidden_states: Tensor) -> FrameGrid:
    """Token grid of a latent ``(B, C, T, H, W)`` after the model's patching (floored, as diffusers)."""
    return latent_frame_grid(hidden_states, tuple(model.config.patch_size))


def latent_frame_grid(hidden_states: Tensor, patch_size: tuple[int, int, int]) -> FrameGrid:
    """Token grid of a latent ``(B, C, T, H, W)`` patched by ``patch_size`` (floored, as diffusers)."""
    if hidden_states.ndim != 5:
        raise ValueError(
            f"a Wan transformer takes hidden_states (B, C, T, H, W); got shape {tuple(hidden_states.shape)}"
        )
    p_t, p_h, p_w = patch_size
    t, h, w = hidden_states.shape[2:]
    if t < p_t or h < p_h or w < p_w:
        raise ValueError(f"latent {t}×{h}×{w} is smaller than the patch size {p_t}×{p_h}×{p_w}")
    return FrameGrid(t // p_t, h // p_h, w // p_w)


def wan_rotary_for_frames(
    rope: nn.Module, frame_start: int, frame_end: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """RoPE tables of post-patch frames ``[frame_start, frame_end)`` of an ``height × width`` grid.

    Equals rows ``[frame_start·P, frame_end·P)`` (``P = height·width``) of ``rope(latent)`` for the
    full latent, without building the full-grid tables (memory independent of the clip length).

    Args:
        rope: the model's ``WanRotaryPosEmbed`` (buffers ``freqs_cos`` / ``freqs_sin`` of shape
            ``(max_seq_len, d)``, column split ``t_dim | h_dim | w_dim``).

    Returns:
        ``(freqs_cos, freqs_sin)``, each ``(1, n·P, 1, d)`` with ``n = frame_end − frame_start``.
    """
    max_len = rope.freqs_cos.shape[0]
    if frame_end > max_len or height > max_len or width > max_len:
        raise ValueError(
            f"RoPE positions up to frame {frame_end - 1}, {height}×{width} exceed the model's "
            f"rope_max_seq_len={max_len}"
        )
    n = frame_end - frame_start
    splits = [rope.t_dim, rope.h_dim, rope.w_dim]

    def grid_table(freqs: Tensor) -> Tensor:
        f_t, f_h, f_w = freqs.split(splits, dim=1)  # (max_len, t_dim | h_dim | w_dim)
        parts = (
            f_t[frame_start:frame_end].view(n, 1, 1, -1).expand(n, height, width, -1),
            f_h[:height].view(1, height, 1, -1).expand(n, height, width, -1),
            f_w[:width].view(1, 1, width, -1).expand(n, height, width, -1),
        )
        return torch.cat(parts, dim=-1).reshape(1, n * height * width, 1, -1)  # frame-major tokens

    return grid_table(rope.freqs_cos), grid_table(rope.freqs_sin)
