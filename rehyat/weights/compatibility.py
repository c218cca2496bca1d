"""Does a φ file fit a model? Shape, block range and base-model fingerprint checks."""

from __future__ import annotations

from .base_model import BaseModelInfo
from .fingerprint import DEFAULT_ATOL, DEFAULT_RTOL, FINGERPRINT_ROLES, _first_mismatch
from .phi_file import PhiWeights
from .phi_tensors import check_phi_shapes


def check_compatible(phi: PhiWeights, base: BaseModelInfo, fingerprint: list[float] | None = None) -> None:
    """Raise ``ValueError`` unless ``phi`` fits the model described by ``base`` (and ``fingerprint``).

    Checks, in order: width and heads, block range, layer count, φ tensor shapes (heads ×
    head_dim and the config's feature-map widths) and — when ``fingerprint`` is given — the base
    model's self-attention fingerprint. Messages name both the file's and the model's side.
    """
    made_for = phi.base
    both = f"φ file was made for {made_for.describe()} but this model has {base.describe()}"
    if (made_for.dim, made_for.num_heads) != (base.dim, base.num_heads):
        raise ValueError(both)
    out_of_range = [b for b in phi.blocks if b >= base.num_layers]
    if out_of_range:
        raise ValueError(
            f"φ file blocks {out_of_range} out of range for a {base.num_layers}-block model "
            f"(blocks 0..{base.num_layers - 1}; the file converts blocks {list(phi.blocks)})"
        )
    if made_for.num_layers != base.num_layers:
        raise ValueError(both)
    check_phi_shapes(phi.tensors, phi.blocks, phi.config.attention.feature_map, base, "this model")
    if fingerprint is None:
        return
    where = _first_mismatch(phi.fingerprint, fingerprint, DEFAULT_RTOL, DEFAULT_ATOL)
    if where is None:
        return
    message = (
        "φ file's base-model fingerprint does not match this model's self-attention weights "
        "(file made for a different Wan checkpoint — for Wan2.2 A14B, each expert needs its own φ: "
        "check that the high-noise φ goes to the high-noise model and the low-noise φ to the other)"
    )
    if where < 0:
        message += f": the file's has {len(phi.fingerprint)} values, this model's {len(fingerprint)}"
    else:
        block, role = divmod(where, len(FINGERPRINT_ROLES))
        message += f"; first difference at block {block}, self-attention {FINGERPRINT_ROLES[role]}.weight"
    raise ValueError(message)
