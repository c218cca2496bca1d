"""The state store of a streaming run: which recurrent states each model evaluation continues from.

In the streaming order every chunk runs the whole sampler; the k-th model evaluation of chunk t
continues the states that the k-th evaluation of chunk t−1 left. Those states differ per
conditioning (cond / uncond / further conds) and per batch item, so the store is keyed by
:class:`StateKey` = (evaluation index within one chunk's sampler run, conditioning identity,
batch item) and maps each key to one :class:`~rehyat.ops.RecurrentState` per block (batch 1).

States can stay on the compute device or be offloaded to the CPU (pinned on CUDA, so the copies
back overlap with compute). :func:`state_store_bytes` gives the size before sampling starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..ops import RecurrentState

StateDevice = str  # "auto" | "cpu" | "gpu"
STATE_DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


@dataclass(frozen=True, order=True)
class StateKey:
    """Where a batch item's states live in the store.

    Attributes:
        evaluation: index of the model evaluation within one chunk's sampler run (0-based).
        conditioning: identity of the conditioning: (cond_or_uncond value, occurrence) — 0 = cond,
            1 = uncond; occurrence counts repeated values within one evaluation (several conds).
        item: batch item within that conditioning's slice of the model batch.
    """

    evaluation: int
    conditioning: tuple[int, int]
    item: int


def state_store_bytes(
    *, evaluations: int, conditionings: int, batch: int, blocks: int, heads: int, head_dim: int,
    feature_dim: int, overlap_frames: int, tokens_per_frame: int, overlap_bytes_per_element: int,
) -> int:
    """Size of a full streaming state store, in bytes (the figure to report before sampling).

    ``evaluations × conditionings × batch × blocks × (|S| + |z| + |overlap K/V|)`` with
    ``|S| = 4·H·d'·d`` and ``|z| = 4·H·d'`` (fp32) and ``|overlap K/V| = 2·To·P·H·d·e`` where ``e``
    is the activations' element size (``H·d = C``, the model width).
    """
    per_state = 4 * heads * feature_dim * head_dim + 4 * heads * feature_dim
    per_state += 2 * overlap_frames * tokens_per_frame * heads * head_dim * overlap_bytes_per_element
    return evaluations * conditionings * batch * blocks * per_state


def resolve_state_device(
    state_device: str, compute_device: torch.device, *, store_bytes: int = 0, free_bytes: int | None = None,
) -> torch.device:
    """Where the store keeps its states.

    ``"gpu"`` → the compute device; ``"cpu"`` → CPU (offloaded); ``"auto"`` → the compute device
    when it is the CPU or when the store takes at most a quarter of ``free_bytes`` there, else CPU.
    """
    if state_device not in STATE_DEVICES:
        raise ValueError(f"state_device must be one of {STATE_DEVICES}; got {state_device!r}")
    compute_device = torch.device(compute_device)
    if state_device == "gpu" or compute_device.type == "cpu":
        return compute_device
    if state_device == "auto" and free_bytes is not None and store_bytes <= free_bytes // 4:
        return compute_device
    return torch.device("cpu")


@dataclass(frozen=True)
class StorePlan:
    """Where the streaming state store lives, decided once per run (see :func:`plan_state_store`).

    Attributes:
        device: the store's device.
        reserved_bytes: compute-device memory to set aside for the store before the model is loaded
            (the store's estimated size when it lives there; 0 when it is offloaded or on the CPU).
    """

    device: torch.device
    reserved_bytes: int


def plan_state_store(
    state_device: str, compute_device: torch.device, *, store_bytes: int, free_bytes: int | None = None,
) -> StorePlan:
    """One decision for both the memory estimate and the store: :func:`resolve_state_device`, plus
    the bytes to reserve on the compute device whenever the store ends up there (``"gpu"`` or ``"auto"``)."""
    device = resolve_state_device(
        state_device, compute_device, store_bytes=store_bytes, free_bytes=free_bytes
    )
    return StorePlan(device, int(store_bytes) if device.type != "cpu" else 0)


def _detached_copy(state: RecurrentState, device: torch.device) -> RecurrentState:
    """A copy of a batch-1 view on ``device`` (pinned host memory when offloading from CUDA)."""
    if state.kv.device != device:
        return state.to(device, pin_memory=True)
    return RecurrentState(kv=state.kv.clone(), k_sum=state.k_sum.clone(), k_overlap=state.k_overlap.clone(),
                          v_overlap=state.v_overlap.clone(), frames_seen=state.frames_seen)


class StateStore:
    """(evaluation, conditioning, batch item) → per-block recurrent states, on one storage device.

    Args:
        device: where stored states live (CPU = offloaded; pinned when the states come from CUDA).

    A state read for the chunk starting at frame ``f`` must have seen exactly ``f`` frames.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._states: dict[StateKey, dict[int, RecurrentState]] = {}
        self.peak_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def keys(self) -> list[StateKey]:
        """Stored keys, sorted."""
        return sorted(self._states)

    def clear(self) -> None:
        """Forget every state (the next chunk starts a new clip)."""
        self._states.clear()

    def load(
        self, keys: Iterable[StateKey], *, frame_offset: int, device: torch.device,
    ) -> dict[int, RecurrentState]:
        """Per-block states for ``keys`` batched in order, on ``device``; empty at frame 0.

        Raises:
            KeyError: a key has no state although ``frame_offset > 0`` (the sampler made a different
                sequence of evaluations in this chunk than in the previous one).
            ValueError: a stored state saw a different number of frames than ``frame_offset``.
        """
        keys = list(keys)
        if frame_offset == 0:
            return {}
        missing = [k for k in keys if k not in self._states]
        if missing:
            raise KeyError(
                f"no recurrent state for {missing[0]} at frame {frame_offset}: this chunk's sampler run "
                "made model evaluations the previous chunk did not (different cond batching, batch size "
                "or number of evaluations) — streaming needs the same evaluations in every chunk"
            )
        blocks = sorted(self._states[keys[0]])
        out = {}
        for block in blocks:
            items = [self._states[k][block] for k in keys]
            for key, state in zip(keys, items, strict=True):
                if state.frames_seen != frame_offset:
                    raise ValueError(
                        f"state {key} block {block} saw {state.frames_seen} frames but the chunk starts at "
                        f"frame {frame_offset}: chunks must be processed in order"
                    )
            batched = RecurrentState.concatenate(items)  # (B', ...) on the store's device
            out[block] = batched.to(device, non_blocking=self.device.type == "cpu" and device.type == "cuda")
        return out

    def save(self, keys: Sequence[StateKey], states: dict[int, RecurrentState]) -> None:
        """Store per-block batched ``states`` item by item under ``keys`` (one key per batch item)."""
        per_item: list[dict[int, RecurrentState]] = [{} for _ in keys]
        for block, state in states.items():
            items = state.split()  # views: copied to the store below
            if len(items) != len(keys):
                raise ValueError(f"block {block}: state batch {len(items)} != {len(keys)} keys")
            for slot, item in zip(per_item, items, strict=True):
                slot[block] = _detached_copy(item, self.device)
        for key, slot in zip(keys, per_item, strict=True):
            self._states[key] = slot
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def items(self) -> list[tuple[StateKey, dict[int, RecurrentState]]]:
        """``(key, {block: state})`` pairs, sorted by key (states as stored, batch 1 each)."""
        return [(key, dict(self._states[key])) for key in sorted(self._states)]

    def put(self, key: StateKey, blocks: dict[int, RecurrentState]) -> None:
        """Store one key's per-block states as given (batch 1 each), e.g. read back from a file."""
        self._states[key] = {block: _detached_copy(state, self.device) for block, state in blocks.items()}
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def nbytes(self) -> int:
        """Bytes held right now."""
        return sum(s.nbytes() for blocks in self._states.values() for s in blocks.values())
