"""The explicit recurrent state carried from chunk to chunk by ReHyAt attention.

Dtypes: S and z (``kv``, ``k_sum``) are always fp32 — every form adds its chunk updates into them
in fp32, whatever the activations' dtype; the overlap K/V keep the activations' dtype (bf16 / fp16
on GPU). A streaming sampler keeps one state per (model evaluation, cond/uncond, batch item):
:meth:`RecurrentState.split` / :meth:`RecurrentState.concatenate` / :meth:`RecurrentState.select`
move between a batched state and per-item states, and :meth:`RecurrentState.to` offloads to
(pinned) CPU memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    @property
    def batch_size(self) -> int:
        """B, the number of sequences this state summarises."""
        return self.kv.shape[0]

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        non_blocking: bool = False,
        pin_memory: bool = False,
    ) -> RecurrentState:
        """Move to ``device``; ``dtype`` (if given) applies to the overlap K/V only (S, z stay fp32).

        Args:
            device: target device (None: stay).
            dtype: dtype of the overlap K/V (None: keep).
            non_blocking: asynchronous copies where the backend allows it (device ↔ pinned host).
                After a non-blocking copy to the CPU, synchronise the source's stream before
                reading the result on the host.
            pin_memory: when the target is the CPU and CUDA is available, put the copies in
                page-locked memory (fast, asynchronous host ↔ GPU transfers for offloaded states).
                Without CUDA, pinning is meaningless and the flag is ignored.
        """
        target = torch.device(device) if device is not None else None
        pin = pin_memory and torch.cuda.is_available() and (
            target.type == "cpu" if target is not None else self.kv.device.type == "cpu"
        )

        def move(t: Tensor, to_dtype: torch.dtype | None) -> Tensor:
            if not pin:
                return t.to(device=target, dtype=to_dtype, non_blocking=non_blocking)
            if t.device.type == "cpu" and t.is_pinned() and to_dtype in (None, t.dtype):
                return t
            host = torch.empty(t.shape, dtype=to_dtype or t.dtype, device="cpu", pin_memory=True)
            return host.copy_(t, non_blocking=non_blocking)

        return RecurrentState(
            kv=move(self.kv, None),
            k_sum=move(self.k_sum, None),
            k_overlap=move(self.k_overlap, dtype),
            v_overlap=move(self.v_overlap, dtype),
            frames_seen=self.frames_seen,
        )

    def split(self) -> list[RecurrentState]:
        """One state per batch item (each with batch 1), in batch order.

        The parts are views of this state's tensors (no copy); :meth:`to` or :meth:`select` copy.
        """
        return [
            RecurrentState(
                *(getattr(self, name)[i : i + 1] for name in _TENSOR_FIELDS), frames_seen=self.frames_seen
            )
            for i in range(self.batch_size)
        ]

    def select(self, indices: Sequence[int] | Tensor) -> RecurrentState:
        """The batch items ``indices`` (in that order, repeats allowed) as a new state (a copy).

        Raises:
            IndexError: an index outside ``[-B, B)``.
        """
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        batch = self.batch_size
        bad = [int(i) for i in index if not -batch <= int(i) < batch]
        if bad:
            raise IndexError(f"select: batch indices {bad} out of range for a state of batch {batch}")
        index = index.remainder(batch) if batch else index
        return RecurrentState(
            *(getattr(self, name).index_select(0, index.to(getattr(self, name).device))
              for name in _TENSOR_FIELDS),
            frames_seen=self.frames_seen,
        )

    @classmethod
    def concatenate(cls, states: Sequence[RecurrentState]) -> RecurrentState:
        """Stack states of single items (or sub-batches) along the batch axis; inverse of :meth:`split`.

        All states must summarise the same frames (``frames_seen``) with the same heads, head
        width, overlap length, overlap dtype and device. A state with ``feature_dim == 0`` (nothing
        absorbed yet) joins states of width d' as exact zero sums of that width; two different
        non-zero widths are refused.

        Raises:
            ValueError: empty ``states`` or mismatched states (the message names the values).
        """
        states = list(states)
        if not states:
            raise ValueError("concatenate needs at least one RecurrentState; got none")
        for i, state in enumerate(states):
            if not isinstance(state, RecurrentState):
                raise TypeError(f"concatenate: states[{i}] is a {type(state).__name__}, not a RecurrentState")
        first = states[0]
        _require_same(states, "frames_seen", lambda s: s.frames_seen,
                      "states summarise different frames; only states of one chunk boundary join")
        _require_same(states, "(heads, head_dim)", lambda s: (s.kv.shape[1], s.kv.shape[3]), "")
        _require_same(states, "overlap K/V tokens", lambda s: s.k_overlap.shape[2],
                      "states must hold the same overlap frames")
        _require_same(states, "overlap K/V dtype", lambda s: s.k_overlap.dtype,
                      "convert them with .to(dtype=...) first")
        _require_same(states, "device", lambda s: s.kv.device, "move them with .to(device) first")
        widths = sorted({s.feature_dim for s in states} - {0})
        if len(widths) > 1:
            raise ValueError(
                f"concatenate: states have different feature widths d' {widths}: they were built by "
                "different feature maps and cannot share one batch"
            )
        width = widths[0] if widths else 0

        def linear_part(state: RecurrentState) -> tuple[Tensor, Tensor]:
            if state.feature_dim == width:
                return state.kv, state.k_sum
            batch, heads, _, dim = state.kv.shape
            return (state.kv.new_zeros(batch, heads, width, dim), state.k_sum.new_zeros(batch, heads, width))

        parts = [linear_part(s) for s in states]
        return cls(
            kv=torch.cat([kv for kv, _ in parts]),
            k_sum=torch.cat([z for _, z in parts]),
            k_overlap=torch.cat([s.k_overlap for s in states]),
            v_overlap=torch.cat([s.v_overlap for s in states]),
            frames_seen=first.frames_seen,
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


def _require_same(
    states: list[RecurrentState], what: str, key: Callable[[RecurrentState], object], hint: str
) -> None:
    values = [key(s) for s in states]
    if any(v != values[0] for v in values[1:]):
        shown = ", ".join(f"states[{i}]: {v}" for i, v in enumerate(values))
        raise ValueError(f"concatenate: mismatched {what} ({shown})" + (f"; {hint}" if hint else ""))
