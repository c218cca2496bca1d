"""A prompt per chunk: which text conditioning each chunk of a chunked ReHyAt run attends to.

A :class:`PromptSchedule` lists text embeddings with the **video** frame at which each takes over.
A chunk uses the last entry whose start it has reached: entry k applies from the first chunk whose
first video frame is ≥ its start (Wan: latent frame 0 is video frame 0, latent frame L ≥ 1 covers
video frames 4L − 3 … 4L), so a change lands on a chunk boundary. Because the hybrid attention is
causal and the linear state carries the earlier chunks, the new prompt continues the clip the old
one started; a schedule with one entry is exactly the plain conditioning.

Only the cross-attention input changes per chunk (every other input is shared by the whole clip).
Pure PyTorch: never imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULE_KEY = "rehyat_prompt_schedule"
"""Key of a conditioning entry's dict that carries its :class:`PromptSchedule`."""
SCHEDULES_OPTION = "rehyat_prompt_schedules"
"""``transformer_options`` entry: the schedule (or None) of each conditioning block of a model call."""
VIDEO_FRAMES_PER_LATENT = 4  # Wan2.1 / 2.2 VAE: temporal compression


def chunk_first_video_frame(latent_frame: int) -> int:
    """The first video frame decoded from latent frame ``latent_frame`` (0 → 0, L ≥ 1 → 4L − 3)."""
    return 0 if latent_frame == 0 else VIDEO_FRAMES_PER_LATENT * latent_frame - (VIDEO_FRAMES_PER_LATENT - 1)


def chunk_boundaries(chunk_frames: int, count: int) -> list[int]:
    """First video frames of the first ``count`` chunks of ``chunk_frames`` latent frames (for tooltips)."""
    return [chunk_first_video_frame(c * chunk_frames) for c in range(count)]


@dataclass(frozen=True)
class PromptSchedule:
    """Text embeddings with the video frame at which each takes over.

    Attributes:
        starts: video frame of each entry, strictly increasing, the first 0.
        embeddings: the cross-attention input of each entry ``(b, L, C_text)``.
    """

    starts: tuple[int, ...]
    embeddings: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if not self.starts or len(self.starts) != len(self.embeddings):
            raise ValueError("a prompt schedule needs one start frame per conditioning, at least one")
        if self.starts[0] != 0:
            raise ValueError(f"the first prompt of a schedule starts at frame 0; got {self.starts[0]}")
        for before, after in zip(self.starts, self.starts[1:], strict=False):
            if after <= before:
                raise ValueError(f"start frames must increase; got {list(self.starts)}")
        for index, embedding in enumerate(self.embeddings):
            if not isinstance(embedding, Tensor) or embedding.ndim != 3:
                shape = tuple(embedding.shape) if isinstance(embedding, Tensor) else type(embedding).__name__
                raise ValueError(f"conditioning_{index + 1}: expected a text embedding (b, L, C); got "
                                 f"{shape}")
            if embedding.shape[-1] != self.embeddings[0].shape[-1]:
                raise ValueError(f"conditioning_{index + 1}: text width {embedding.shape[-1]} differs from "
                                 f"conditioning_1's {self.embeddings[0].shape[-1]} (another text encoder?)")

    def entry_for(self, latent_frame: int) -> int:
        """Index of the entry a chunk starting at ``latent_frame`` uses."""
        first_video_frame = chunk_first_video_frame(latent_frame)
        return max(i for i, start in enumerate(self.starts) if start <= first_video_frame)


def _fit(embedding: Tensor, rows: int, length: int, like: Tensor) -> Tensor:
    """``embedding`` ``(b, l, C)`` as ``rows`` rows of ``length`` tokens (ComfyUI's batching rules)."""
    if embedding.shape[0] not in (1, rows):
        raise ValueError(f"a scheduled prompt has batch {embedding.shape[0]}, the call {rows} rows")
    if length % embedding.shape[1]:
        raise ValueError(
            f"a scheduled prompt has {embedding.shape[1]} tokens, which do not tile the call's {length} "
            "(ComfyUI repeats shorter prompts to a common length): encode the prompts with the same encoder"
        )
    out = embedding.to(device=like.device, dtype=like.dtype)
    if embedding.shape[0] != rows:
        out = out.expand(rows, -1, -1)
    return out.repeat(1, length // embedding.shape[1], 1)  # (rows, L, C)


def schedule_picks(schedules: Sequence[PromptSchedule | None], latent_frame: int) -> tuple[int, ...]:
    """The entry each conditioning block uses for the chunk starting at ``latent_frame`` (-1: none);
    all ≤ 0 means the call's own context applies unchanged."""
    return tuple(-1 if s is None else s.entry_for(latent_frame) for s in schedules)


def scheduled_context(context: Tensor, schedules: Sequence[PromptSchedule | None], latent_frame: int,
                      ) -> tuple[Tensor, tuple[int, ...]]:
    """The cross-attention input of a model call for the chunk starting at ``latent_frame``.

    ``context`` ``(B, L, C)`` holds ``len(schedules)`` conditioning blocks of equal size; the rows of
    a block whose schedule is not None are replaced by the entry the chunk uses. Returns the context
    and the entry index per block (-1: unscheduled) — the same indices give the same tensor. With
    no schedule, or every scheduled block on its first entry, ``context`` itself is returned.
    """
    if not schedules:
        return context, ()
    if context.shape[0] % len(schedules):
        raise ValueError(f"model batch {context.shape[0]} is not a multiple of its {len(schedules)} "
                         "conditionings")
    rows = context.shape[0] // len(schedules)
    picks = schedule_picks(schedules, latent_frame)
    if all(p <= 0 for p in picks):
        return context, picks
    blocks = list(context.split(rows))
    for index, (schedule, pick) in enumerate(zip(schedules, picks, strict=True)):
        if schedule is not None and pick > 0:
            blocks[index] = _fit(schedule.embeddings[pick], rows, context.shape[1], context)
    return torch.cat(blocks), picks


def schedules_of(conds: dict) -> dict:
    """``{uuid: PromptSchedule}`` of ComfyUI's converted conds (``{"positive": [dict, …], …}``)."""
    found = {}
    for entries in (conds or {}).values():
        for cond in entries or ():
            schedule = cond.get(SCHEDULE_KEY) if isinstance(cond, dict) else None
            if schedule is not None:
                if not isinstance(schedule, PromptSchedule):
                    raise ValueError(f"conditioning key {SCHEDULE_KEY!r} holds a {type(schedule).__name__}, "
                                     "not a prompt schedule")
                found[cond.get("uuid")] = schedule
    return found


__all__ = ["SCHEDULES_OPTION", "SCHEDULE_KEY", "PromptSchedule", "chunk_boundaries",
           "chunk_first_video_frame", "schedule_picks", "scheduled_context", "schedules_of"]
