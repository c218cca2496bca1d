"""Key names of Wan2.1 transformer weights: original Wan (ComfyUI) layout <-> diffusers layout.

Two layouts of the same weights exist:

* ``"wan"``: the original Wan2.1 checkpoint names, also used by ComfyUI's
  ``comfy.ldm.wan.model.WanModel`` (``blocks.N.self_attn.q.weight``, ``head.modulation``, ...);
* ``"diffusers"``: the names of diffusers' ``WanTransformer3DModel``
  (``blocks.N.attn1.to_q.weight``, ``scale_shift_table``, ...).

The mapping is a pure rename: every tensor keeps its shape and values (Wan's ``modulation``
``(1, 6, dim)`` and ``head.modulation`` ``(1, 2, dim)`` are laid out exactly like diffusers'
``scale_shift_table``), so the converters pass tensors through unchanged, without copying.
One subtlety is the naming of the block norms: Wan calls the affine cross-attention norm
``norm3`` and the FFN norm ``norm2``, diffusers the other way round; only the affine one has
weights, so Wan ``blocks.N.norm3.*`` <-> diffusers ``blocks.N.norm2.*``.

``_ENTRIES`` is the single source of truth; every lookup table below is derived from it.
This module imports neither diffusers nor ComfyUI; it only renames dictionary keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

Layout = Literal["wan", "diffusers"]
LAYOUTS: tuple[str, ...] = ("wan", "diffusers")

SELF_ATTENTION_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "norm_q", "norm_k")
"""Role names of the self-attention parameters, as used by :func:`self_attention_keys`."""

COMFYUI_CHECKPOINT_PREFIX = "model.diffusion_model."
"""Prefix of the transformer's keys in a checkpoint saved by ComfyUI."""

_T = TypeVar("_T")

_WB: tuple[str, ...] = ("weight", "bias")  # nn.Linear, nn.Conv3d, affine nn.LayerNorm
_W: tuple[str, ...] = ("weight",)  # nn.RMSNorm
_PARAM: tuple[str, ...] = ("",)  # a bare nn.Parameter: the module path is the whole key

_BLOCK_KEY = re.compile(r"^blocks\.(0|[1-9][0-9]*)\.(.+)$")

# diffusers ignores these keys when loading (`_keys_to_ignore_on_load_unexpected`); they carry
# no Wan weight, so the state-dict converter drops them instead of failing.
_DIFFUSERS_IGNORED = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.(weight|bias)$")


@dataclass(frozen=True)
class _Entry:
    """One module (or bare parameter) and its names in both layouts.

    Attributes:
        wan: module path in the Wan layout (relative to ``blocks.N.`` when ``in_block``).
        diffusers: module path in the diffusers layout (same convention).
        leaves: parameter names under the module; ``""`` means the path is itself the key.
        in_block: whether the module lives inside every transformer block ``blocks.N``.
        role: self-attention role name (see ``SELF_ATTENTION_ROLES``), or ``None``.
    """

    wan: str
    diffusers: str
    leaves: tuple[str, ...]
    in_block: bool = False
    role: str | None = None


def _g(wan: str, diffusers: str, leaves: tuple[str, ...]) -> _Entry:
    """A model-level (global) entry."""
    return _Entry(wan, diffusers, leaves)


def _b(wan: str, diffusers: str, leaves: tuple[str, ...], role: str | None = None) -> _Entry:
    """A per-block entry (paths relative to ``blocks.N.``)."""
    return _Entry(wan, diffusers, leaves, in_block=True, role=role)


_ENTRIES: tuple[_Entry, ...] = (
    # --- embeddings --------------------------------------------------------------------------
    _g("patch_embedding", "patch_embedding", _WB),
    _g("text_embedding.0", "condition_embedder.text_embedder.linear_1", _WB),
    _g("text_embedding.2", "condition_embedder.text_embedder.linear_2", _WB),
    _g("time_embedding.0", "condition_embedder.time_embedder.linear_1", _WB),
    _g("time_embedding.2", "condition_embedder.time_embedder.linear_2", _WB),
    _g("time_projection.1", "condition_embedder.time_proj", _WB),
    # --- I2V / FLF2V CLIP image embedding (MLPProj: LayerNorm, Linear, GELU, Linear, LayerNorm)
    _g("img_emb.proj.0", "condition_embedder.image_embedder.norm1", _WB),
    _g("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj", _WB),
    _g("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2", _WB),
    _g("img_emb.proj.4", "condition_embedder.image_embedder.norm2", _WB),
    _g("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed", _PARAM),
    # --- output head ---------------------------------------------------------------------------
    _g("head.head", "proj_out", _WB),
    _g("head.modulation", "scale_shift_table", _PARAM),
    # --- transformer blocks --------------------------------------------------------------------
    _b("modulation", "scale_shift_table", _PARAM),
    _b("self_attn.q", "attn1.to_q", _WB, role="q"),
    _b("self_attn.k", "attn1.to_k", _WB, role="k"),
    _b("self_attn.v", "attn1.to_v", _WB, role="v"),
    _b("self_attn.o", "attn1.to_out.0", _WB, role="o"),
    _b("self_attn.norm_q", "attn1.norm_q", _W, role="norm_q"),
    _b("self_attn.norm_k", "attn1.norm_k", _W, role="norm_k"),
    _b("norm3", "norm2", _WB),  # affine pre-cross-attention norm (names swapped!)
    _b("cross_attn.q", "attn2.to_q", _WB),
    _b("cross_attn.k", "attn2.to_k", _WB),
    _b("cross_attn.v", "attn2.to_v", _WB),
    _b("cross_attn.o", "attn2.to_out.0", _WB),
    _b("cross_attn.norm_q", "attn2.norm_q", _W),
    _b("cross_attn.norm_k", "attn2.norm_k", _W),
    _b("cross_attn.k_img", "attn2.add_k_proj", _WB),  # I2V only
    _b("cross_attn.v_img", "attn2.add_v_proj", _WB),  # I2V only
    _b("cross_attn.norm_k_img", "attn2.norm_added_k", _W),  # I2V only
    _b("ffn.0", "ffn.net.0.proj", _WB),
    _b("ffn.2", "ffn.net.2", _WB),
)


def _join(path: str, leaf: str) -> str:
    """``path.leaf``, or ``path`` alone for a bare parameter."""
    return f"{path}.{leaf}" if leaf else path


def _key_pairs(in_block: bool) -> list[tuple[str, str]]:
    """All ``(wan_key, diffusers_key)`` pairs of global or per-block entries."""
    return [
        (_join(e.wan, leaf), _join(e.diffusers, leaf))
        for e in _ENTRIES
        if e.in_block == in_block
        for leaf in e.leaves
    ]


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    """Inverse of a one-to-one mapping (asserts it is one-to-one)."""
    inverse = {v: k for k, v in table.items()}
    if len(inverse) != len(table):
        raise RuntimeError("the Wan <-> diffusers key table is not one-to-one")
    return inverse


_GLOBAL_W2D: dict[str, str] = dict(_key_pairs(in_block=False))
_BLOCK_W2D: dict[str, str] = dict(_key_pairs(in_block=True))
# source layout -> (global keys, per-block keys relative to ``blocks.N.``) -> other layout's name
_TABLES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "wan": (_GLOBAL_W2D, _BLOCK_W2D),
    "diffusers": (_invert(_GLOBAL_W2D), _invert(_BLOCK_W2D)),
}

WAN_KEY_PATTERNS: frozenset[str] = frozenset(
    list(_GLOBAL_W2D) + [f"blocks.{{N}}.{k}" for k in _BLOCK_W2D]
)
"""Every known Wan-layout key, per-block keys written with ``{N}`` for the block index."""

DIFFUSERS_KEY_PATTERNS: frozenset[str] = frozenset(
    list(_GLOBAL_W2D.values()) + [f"blocks.{{N}}.{k}" for k in _BLOCK_W2D.values()]
)
"""Every known diffusers-layout key, per-block keys written with ``{N}`` for the block index."""


def _target(layout: str) -> str:
    """The other layout."""
    return "diffusers" if layout == "wan" else "wan"


def _lookup(key: str, source: str) -> str | None:
    """Name of ``key`` (a ``source``-layout key) in the other layout, or ``None`` if unknown."""
    global_table, block_table = _TABLES[source]
    if key in global_table:
        return global_table[key]
    match = _BLOCK_KEY.match(key)
    if match is not None and match.group(2) in block_table:
        return f"blocks.{match.group(1)}.{block_table[match.group(2)]}"
    return None


def _convert_key(key: str, source: str) -> str:
    """Rename one key from layout ``source`` to the other layout.

    Raises:
        ValueError: if ``key`` is not a known key of the ``source`` layout.
    """
    new = _lookup(key, source)
    if new is None:
        raise ValueError(
            f"unknown {source}-layout Wan2.1 transformer key {key!r}: it has no "
            f"{_target(source)}-layout counterpart (supported: Wan2.1 T2V/I2V/FLF2V transformer "
            f"weights)"
        )
    return new


def wan_key_to_diffusers(key: str) -> str:
    """Diffusers-layout name of a Wan-layout key, e.g. ``blocks.0.self_attn.q.weight`` ->
    ``blocks.0.attn1.to_q.weight``.

    Raises:
        ValueError: if ``key`` is not a Wan2.1 transformer key (the message names the key).
    """
    return _convert_key(key, "wan")


def diffusers_key_to_wan(key: str) -> str:
    """Wan-layout name of a diffusers-layout key, e.g. ``blocks.0.attn1.to_out.0.bias`` ->
    ``blocks.0.self_attn.o.bias``.

    Raises:
        ValueError: if ``key`` is not a ``WanTransformer3DModel`` key (the message names the key).
    """
    return _convert_key(key, "diffusers")


def _strip_prefix(key: str, prefix: str) -> str:
    """``key`` without ``prefix``; raises ValueError naming the key if the prefix is missing."""
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} does not start with the expected prefix {prefix!r}")
    return key[len(prefix) :]


def _rename_all(
    sd: Mapping[str, _T],
    source: str,
    *,
    strip: str = "",
    add: str = "",
    skip: re.Pattern[str] | None = None,
) -> dict[str, _T]:
    """Rename every key of ``sd`` from layout ``source`` to the other one.

    ``strip`` is removed from each input key, ``add`` prepended to each output key; input keys
    matching ``skip`` (after stripping) are dropped.
    """
    out: dict[str, _T] = {}
    for key, value in sd.items():
        bare = _strip_prefix(key, strip)
        if skip is not None and skip.match(bare):
            continue
        out[add + _convert_key(bare, source)] = value
    return out


def wan_state_dict_to_diffusers(sd: Mapping[str, _T], prefix: str = "") -> dict[str, _T]:
    """Rename a Wan-layout state dict to the diffusers layout (tensors passed through unchanged).

    Args:
        sd: Wan-layout transformer state dict (T2V, I2V or FLF2V).
        prefix: prefix every key of ``sd`` carries and that is removed first, e.g.
            :data:`COMFYUI_CHECKPOINT_PREFIX` for a ComfyUI checkpoint or ``"diffusion_model."``
            for ``comfy`` ``BaseModel.state_dict()``.

    Returns:
        A new dict with diffusers-layout keys, loadable into ``WanTransformer3DModel`` with
        ``strict=True`` (the model's config must match the weights' shapes).

    Raises:
        ValueError: for a key without the prefix or not known (the message names the key).
    """
    return _rename_all(sd, "wan", strip=prefix)


def diffusers_state_dict_to_wan(sd: Mapping[str, _T], prefix: str = "") -> dict[str, _T]:
    """Rename a diffusers-layout ``WanTransformer3DModel`` state dict to the Wan layout.

    Keys that diffusers itself ignores on load (``blocks.N.attn2.norm_added_q.*``) are dropped.

    Args:
        sd: diffusers-layout state dict.
        prefix: prepended to every output key, e.g. :data:`COMFYUI_CHECKPOINT_PREFIX`.

    Returns:
        A new dict with Wan-layout keys (tensors passed through unchanged).

    Raises:
        ValueError: for a key that is not a known diffusers key (the message names the key).
    """
    return _rename_all(sd, "diffusers", add=prefix, skip=_DIFFUSERS_IGNORED)


def self_attention_keys(block_index: int, layout: Layout) -> dict[str, str]:
    """Key prefixes of block ``block_index``'s self-attention parameters, by role.

    Append ``.weight`` (all roles) or ``.bias`` (``q``, ``k``, ``v``, ``o`` only) to get a key.

    Args:
        block_index: index ``N`` of the transformer block (``>= 0``).
        layout: ``"wan"`` or ``"diffusers"``.

    Returns:
        ``{"q": ..., "k": ..., "v": ..., "o": ..., "norm_q": ..., "norm_k": ...}``, e.g.
        ``{"q": "blocks.3.self_attn.q", ...}`` for ``"wan"`` or
        ``{"q": "blocks.3.attn1.to_q", "o": "blocks.3.attn1.to_out.0", ...}`` for ``"diffusers"``.

    Raises:
        ValueError: for a negative or non-integer index or an unknown layout.
    """
    if isinstance(block_index, bool) or not isinstance(block_index, int) or block_index < 0:
        raise ValueError(f"block_index must be a non-negative int; got {block_index!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    return {
        e.role: f"blocks.{block_index}.{e.wan if layout == 'wan' else e.diffusers}"
        for e in _ENTRIES
        if e.role is not None
    }


def detect_layout(keys: Iterable[str], prefix: str = "") -> Layout:
    """Tell which layout a state dict's keys use, from its first key that only one layout has.

    Keys named alike in both layouts (``patch_embedding.*``) and keys without ``prefix`` are
    skipped.

    Args:
        keys: state-dict keys (e.g. ``sd.keys()``).
        prefix: prefix to remove from each key first.

    Raises:
        ValueError: if no key tells the layouts apart.
    """
    for key in keys:
        if not key.startswith(prefix):
            continue
        bare = key[len(prefix) :]
        in_wan = _lookup(bare, "wan") is not None
        in_diffusers = _lookup(bare, "diffusers") is not None
        if in_wan != in_diffusers:
            return "wan" if in_wan else "diffusers"
    raise ValueError("no key tells the Wan and diffusers layouts of a Wan2.1 transformer apart")
