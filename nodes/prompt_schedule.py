"""Node: ReHyAt Prompt Schedule — a prompt per chunk for the Chunked Sampler and Extend Clip."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..rehyat.streaming.prompt_schedule import SCHEDULE_KEY, PromptSchedule, chunk_boundaries

CATEGORY = "ReHyAt/sampling"
MAX_START = 100_000
ENTRIES = 4
DEFAULT_STARTS = {2: 33, 3: 65, 4: 97}  # every 2 s at 16 fps
_SHARED_OK = ("pooled_output",)  # dict keys that may differ between entries (Wan does not read them)
_BOUNDARIES = ", ".join(str(f) for f in chunk_boundaries(3, 6)[1:])
_START_TIP = (
    "video frame at which conditioning_{k} takes over. It takes effect at the first chunk boundary at "
    "or after it: chunks of Tc latent frames start at video frames 0, then 4·Tc·c − 3 "
    f"(Tc = 3: {_BOUNDARIES}, …)"
)


def schedule_conditioning(entries: list[tuple[int, Any]]) -> list:
    """``[(start video frame, CONDITIONING), …]`` (the first at 0) → one scheduled CONDITIONING.

    One entry gives the conditioning itself (bit for bit). Every input must have as many items as
    the first; an item's extra inputs (image conditioning, …) must equal the first's — only the text
    changes per chunk.
    """
    first = entries[0][1]
    if len(entries) == 1:
        return first
    starts = [start for start, _ in entries]
    for index, (start, cond) in enumerate(entries):
        name = f"conditioning_{index + 1}"
        if not isinstance(cond, list) or len(cond) != len(first):
            count = len(cond) if isinstance(cond, list) else type(cond).__name__
            raise ValueError(f"{name} holds {count} entries, conditioning_1 {len(first)}: combine them the "
                             "same way")
        if index and start <= starts[index - 1]:
            raise ValueError(f"start_frame_{index + 1} must be after the previous start "
                             f"({starts[index - 1]}); got {start}")
    out = []
    for item, (text, extras) in enumerate(first):
        for index, (_, cond) in enumerate(entries):
            other = cond[item][1]
            if SCHEDULE_KEY in other:
                raise ValueError(f"conditioning_{index + 1} is already a prompt schedule: chain the prompts "
                                 "in one ReHyAt Prompt Schedule")
            if index:
                _check_same_extras(extras, other, index + 1)
        schedule = PromptSchedule(tuple(starts), tuple(cond[item][0] for _, cond in entries))
        out.append([text, {**extras, SCHEDULE_KEY: schedule}])
    return out


def _check_same_extras(first: dict, other: dict, number: int) -> None:
    keys = (set(first) | set(other)) - set(_SHARED_OK)
    for key in sorted(keys):
        a, b = first.get(key), other.get(key)
        same = a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                          and torch.equal(a, b))
        if not same:
            try:
                same = bool(a == b)
            except Exception:  # noqa: BLE001 — objects without a plain equality are compared by identity
                same = False
        if not same:
            raise ValueError(
                f"conditioning_{number}'s {key!r} differs from conditioning_1's: only the text may change "
                "per chunk — give every prompt the same image / extra conditioning"
            )


class ReHyAtPromptSchedule(io.ComfyNode):
    """Up to four prompts, each from a start frame on, as one CONDITIONING applied chunk by chunk."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """conditioning_1 (start_frame_1 = 0), then optional conditioning_k + start_frame_k → CONDITIONING."""
        inputs: list[Any] = [
            io.Conditioning.Input(
                "conditioning_1",
                tooltip="the prompt from the first frame on (alone: passed through unchanged)",
            ),
            io.Int.Input("start_frame_1", default=0, min=0, max=MAX_START, optional=True,
                         tooltip="video frame at which conditioning_1 starts: always 0 (the first prompt "
                         "covers the clip from its first frame; later prompts take over at their own "
                         "start frames)"),
        ]
        for k in range(2, ENTRIES + 1):
            inputs.append(io.Conditioning.Input(f"conditioning_{k}", optional=True,
                                                tooltip=f"optional: the prompt from start_frame_{k} on"))
            inputs.append(io.Int.Input(f"start_frame_{k}", default=DEFAULT_STARTS[k], min=1, max=MAX_START,
                                       optional=True, tooltip=_START_TIP.format(k=k)))
        return io.Schema(
            node_id="ReHyAtPromptSchedule",
            display_name="ReHyAt Prompt Schedule",
            category=CATEGORY,
            description=(
                "A prompt per chunk: connect the result as positive (or negative) of the ReHyAt Chunked "
                "Sampler or Extend Clip (both orders). Each chunk attends to the last prompt whose start "
                "frame it has reached; the clip carries on from what the earlier prompts drew (the linear "
                "state holds the past). Other samplers refuse it (the prompt only changes between chunks)."
            ),
            inputs=inputs,
            outputs=[io.Conditioning.Output(tooltip="the scheduled conditioning")],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, conditioning_1, start_frame_1=0, conditioning_2=None, start_frame_2=DEFAULT_STARTS[2],
                conditioning_3=None, start_frame_3=DEFAULT_STARTS[3], conditioning_4=None,
                start_frame_4=DEFAULT_STARTS[4]) -> io.NodeOutput:
        """Build the schedule from the connected prompts (in input order)."""
        if int(start_frame_1) != 0:
            raise ValueError(
                f"start_frame_1 must be 0: the first prompt covers the clip from its first frame; got "
                f"{start_frame_1} — to change the prompt later, connect conditioning_2 and set start_frame_2"
            )
        entries = [(0, conditioning_1)]
        for cond, start in ((conditioning_2, start_frame_2), (conditioning_3, start_frame_3),
                            (conditioning_4, start_frame_4)):
            if cond is not None:
                entries.append((int(start), cond))
        return io.NodeOutput(schedule_conditioning(entries))


NODES = [ReHyAtPromptSchedule]
