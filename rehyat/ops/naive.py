"""Naive reference form of ReHyAt attention: dense N×N masks in fp64, obviously right.

Only for tests and small inputs (O(N²) memory). Every faster form is checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .layout import check_feature_widths, check_features, chunk_layout, validate_inputs
from .scratch import Scratch
from .state import RecurrentState

FeatureMap = Callable[[Tensor], Tensor]


def rehyat_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    phi_q: FeatureMap,
    phi_k: FeatureMap,
    tokens_per_frame: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    initial_state: RecurrentState | None = None,
    output_final_state: bool = False,
    scratch: Scratch | None = None,
) -> Tensor | tuple[Tensor, RecurrentState]:
    """Reference ReHyAt attention (same signature and semantics as the fast forms).

    ``y_i = (o_soft_i + φq(q_i)·S_i) / (1 + φq(q_i)·z_i)``: ``o_soft_i`` is softmax attention over
    the query's softmax window, normalised on its own (a row-wise log-sum-exp stabiliser), and
    ``S_i, z_i`` sum ``φk(k_j) v_jᵀ`` and ``φk(k_j)`` over its linear set (plus the initial state's
    S and z). Computed in fp64 with dense masks; returns the input dtype. ``scratch`` is accepted
    for a uniform signature and ignored: the reference allocates freely.
    """
    num_frames = validate_inputs(
        q, k, v, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
        overlap_frames=overlap_frames, causal=causal, mode="naive",
        initial_state=initial_state, output_final_state=output_final_state, scale=scale,
    )
    p = tokens_per_frame
    state = initial_state or RecurrentState.empty(k, feature_dim=0)
    n_ov = state.overlap_frames(p)
    k_ext = torch.cat([state.k_overlap, k], dim=2)  # (B, H, (n_ov+T)·P, d)
    v_ext = torch.cat([state.v_overlap, v], dim=2)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    soft_mask, lin_mask = _masks(num_frames, n_ov, p, chunk_frames, overlap_frames, causal, q.device)
    fq = phi_q(q)
    fk = phi_k(k_ext)
    check_features("phi_q", fq, q)
    check_features("phi_k", fk, k_ext)
    check_feature_widths(fq, fk, initial_state)
    q64, k64, v64, fq64, fk64 = (t.double() for t in (q, k_ext, v_ext, fq, fk))
    numer = q64.new_empty(q64.shape)  # (B, H, N, d)
    denom = q64.new_empty(*q64.shape[:-1], 1)  # (B, H, N, 1)
    for start in range(0, q.shape[2], p):  # frame by frame: keys outside a query's sets never enter
        rows = slice(start, start + p)  # (NaN / inf in such a key leaves the query alone, as in the maths)
        soft, lin = soft_mask[start], lin_mask[start]  # (N_ext,) boolean, the same for the frame's rows
        logits = (q64[:, :, rows] @ k64[:, :, soft].transpose(-1, -2)) * scale  # (B, H, P, |soft|)
        o_soft = torch.softmax(logits, dim=-1) @ v64[:, :, soft]  # (B, H, P, d)
        weights = fq64[:, :, rows] @ fk64[:, :, lin].transpose(-1, -2)  # (B, H, P, |lin|)
        numer[:, :, rows] = o_soft + weights @ v64[:, :, lin]
        denom[:, :, rows] = 1.0 + weights.sum(-1, keepdim=True)
    if initial_state is not None and initial_state.feature_dim:
        numer = numer + fq.double() @ initial_state.kv.double()
        denom = denom + (fq.double() @ initial_state.k_sum.double().unsqueeze(-1))
    out = (numer / denom).to(q.dtype)
    if not output_final_state:
        return out
    return out, _final_state(fk, k_ext, v_ext, initial_state, num_frames + n_ov, p, overlap_frames)


def _masks(
    num_frames: int, n_ov: int, p: int, tc: int, to: int, causal: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Dense boolean softmax and linear masks ``(N, N_ext)`` from the chunk layout."""
    key_frame = torch.arange((num_frames + n_ov) * p, device=device) // p  # E-frame of each key
    soft_rows, lin_rows = [], []
    for chunk in chunk_layout(num_frames, tc, to, n_ov):
        in_window = (key_frame >= chunk.window_start) & (key_frame < chunk.window_end)
        before = key_frame < chunk.window_start
        lin = before if causal else ~in_window
        rows = (chunk.frame_end - chunk.frame_start) * p
        soft_rows.append(in_window.expand(rows, -1))
        lin_rows.append(lin.expand(rows, -1))
    return torch.cat(soft_rows), torch.cat(lin_rows)


def _final_state(
    fk: Tensor, k_ext: Tensor, v_ext: Tensor, initial: RecurrentState | None,
    total_frames: int, p: int, to: int,
) -> RecurrentState:
    """State after all frames: S, z over E frames [0, total − To), overlap = the rest."""
    cut = max(total_frames - to, 0) * p
    kv = fk[:, :, :cut].double().transpose(-1, -2) @ v_ext[:, :, :cut].double()  # (B, H, d', d)
    k_sum = fk[:, :, :cut].double().sum(2)  # (B, H, d')
    if initial is not None and initial.feature_dim:
        kv = kv + initial.kv.double()
        k_sum = k_sum + initial.k_sum.double()
    frames_before = initial.frames_seen if initial is not None else 0
    n_ov = initial.overlap_frames(p) if initial is not None else 0
    if cut == 0 and not (initial is not None and initial.has_linear_part):
        kv, k_sum = fk.new_zeros(*fk.shape[:2], 0, v_ext.shape[-1]), fk.new_zeros(*fk.shape[:2], 0)
    return RecurrentState(
        kv=kv.float(), k_sum=k_sum.float(),
        k_overlap=k_ext[:, :, cut:].clone(), v_overlap=v_ext[:, :, cut:].clone(),
        frames_seen=frames_before + total_frames - n_ov,
    )
