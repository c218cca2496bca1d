"""Wan2.1 checkpoints: any state dict in the original key names, and the config its shapes imply."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import Tensor

from .wan_config import CLIP_DIM, WanDiTConfig

COMFYUI_PREFIX = "model.diffusion_model."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def canonical_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Wan2.1 state dict in the original key names (prefix removed, diffusers names renamed)."""
    from ..keymap import detect_layout, diffusers_state_dict_to_wan

    if any(k.startswith(COMFYUI_PREFIX) for k in state_dict):  # a whole ComfyUI checkpoint
        state_dict = {
            k[len(COMFYUI_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(COMFYUI_PREFIX)
        }
    try:
        layout = detect_layout(state_dict)
    except ValueError:
        layout = "wan"
    if layout == "diffusers":
        return diffusers_state_dict_to_wan(state_dict)
    return dict(state_dict)


def detect_config(state_dict: Mapping[str, Tensor], *, num_heads: int | None = None) -> WanDiTConfig:
    """The :class:`WanDiTConfig` of a Wan2.1 state dict (original key names), from its shapes.

    ``num_heads`` cannot be read off any shape; it defaults to ``dim // 128`` (every released
    Wan2.1 model, and ComfyUI's assumption).
    """
    required = (
        "head.modulation",
        "head.head.weight",
        "patch_embedding.weight",
        "blocks.0.ffn.0.weight",
        "text_embedding.0.weight",
        "time_embedding.0.weight",
    )
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a Wan2.1 transformer state dict: missing {missing}")
    dim = state_dict["head.modulation"].shape[-1]
    patch = tuple(int(s) for s in state_dict["patch_embedding.weight"].shape[2:])
    if num_heads is None:
        if dim % 128:
            raise ValueError(f"dim {dim} is not a multiple of 128: pass num_heads explicitly")
        num_heads = dim // 128
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    flf = state_dict.get("img_emb.emb_pos")
    return WanDiTConfig(
        dim=dim,
        ffn_dim=state_dict["blocks.0.ffn.0.weight"].shape[0],
        num_heads=num_heads,
        num_layers=max(blocks) + 1,
        in_dim=state_dict["patch_embedding.weight"].shape[1],
        out_dim=state_dict["head.head.weight"].shape[0] // math.prod(patch),
        text_dim=state_dict["text_embedding.0.weight"].shape[1],
        freq_dim=state_dict["time_embedding.0.weight"].shape[1],
        patch_size=patch,
        model_type="i2v" if "img_emb.proj.0.weight" in state_dict else "t2v",
        qk_norm="blocks.0.self_attn.norm_q.weight" in state_dict,
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
        flf_pos_embed_token_number=None if flf is None else flf.shape[1],
        clip_dim=state_dict["img_emb.proj.0.weight"].shape[0]
        if "img_emb.proj.0.weight" in state_dict
        else CLIP_DIM,
    )
