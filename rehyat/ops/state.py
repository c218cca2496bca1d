"""The explicit recurrent state carried from chunk to chunk by ReHyAt attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_TENSOR_FIELDS = ("kv", "k_sum", "k_overlap", "v_overlap")


@dataclass
class RecurrentState:
    """State of one attention layer after some frames (for one batch of sequences).

    Attributes:
        kv: S = Σ φk(k_j) v_jᵀ over frames that left the softmax window, fp32 ``(B, H, d', d)``.
        k_sum: z = Σ φk(k_j) over the same frames, fp32 ``(B, H, d')``.
        k_overlap: keys of the last ``min(To, frames_seen)`` frames, ``(B, H, n_ov·P, d)``.
        v_overlap: their values, same shape as ``k_overlap``.
        frames_seen: how many frames this state has absorbed (overlap frames included).

    Memory is independent of ``frames_seen``. The state is a plain tensor bundle: use
    :meth:`to_tensors` / :meth:`from_tensors` to save it (e.g. with safetensors).
    """

    kv: Tensor
    k_sum: Tensor
    k_overlap: Tensor
    v_overlap: Tensor
    frames_seen: int

    @classmethod
    def empty(cls, like_k: Tensor, feature_dim: int = 0) -> RecurrentState:
        """The zero state for a sequence shaped like ``like_k`` ``(B, H, ·, d)``.

        With ``feature_dim=0`` (the default) S and z are empty until the first frame leaves the
        softmax window: ``feature_dim == 0`` means "nothing absorbed yet".
        """
        batch, heads, _, dim = like_k.shape
        zeros = like_k.new_zeros
        return cls(
            kv=zeros(batch, heads, feature_dim, dim, dtype=torch.float32),
            k_sum=zeros(batch, heads, feature_dim, dtype=torch.float32),
            k_overlap=like_k.new_empty(batch, heads, 0, dim),
            v_overlap=like_k.new_empty(batch, heads, 0, dim),
            frames_seen=0,
        )

    @property
    def feature_dim(self) -> int:
        """d', the feature-map width of S and z (0 while nothing has been absorbed)."""
        return self.kv.shape[2]

    @property
    def has_linear_part(self) -> bool:
        """Whether S and z hold anything (some frame has left the softmax window)."""
        return self.feature_dim > 0

    def overlap_frames(self, tokens_per_frame: int) -> int:
        """Number of frames held in the overlap K/V buffer."""
        return self.k_overlap.shape[2] // tokens_per_frame

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RecurrentState:
        """Move to ``device``; ``dtype`` (if given) applies to the overlap K/V only (S, z stay fp32)."""
        return RecurrentState(
            kv=self.kv.to(device),
            k_sum=self.k_sum.to(device),
            k_overlap=self.k_overlap.to(device=device, dtype=dtype),
            v_overlap=self.v_overlap.to(device=device, dtype=dtype),
            frames_seen=self.frames_seen,
        )

    def detach(self) -> RecurrentState:
        """A copy cut from the autograd graph."""
        return RecurrentState(
            *(getattr(self, name).detach() for name in _TENSOR_FIELDS), frames_seen=self.frames_seen
        )

    def nbytes(self) -> int:
        """Total bytes held by the state's tensors."""
        return sum(t.numel() * t.element_size() for t in (getattr(self, n) for n in _TENSOR_FIELDS))

    def to_tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat ``{name: tensor}`` dict (contiguous, detached), safetensors-ready."""
        out = {prefix + name: getattr(self, name).detach().contiguous() for name in _TENSOR_FIELDS}
        out[prefix + "frames_seen"] = torch.tensor([self.frames_seen], dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "") -> RecurrentState:
        """Inverse of :meth:`to_tensors`; raises KeyError naming a missing entry."""
        missing = [prefix + n for n in (*_TENSOR_FIELDS, "frames_seen") if prefix + n not in tensors]
        if missing:
            raise KeyError(f"recurrent state entries missing: {missing}")
        return cls(
            *(tensors[prefix + name] for name in _TENSOR_FIELDS),
            frames_seen=int(tensors[prefix + "frames_seen"].item()),
        )
