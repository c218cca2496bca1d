"""The teacher's own small text encoder: prompts are parsed into objects, each object becomes one
context token, and the tokens are projected to Wan2.1's text width (4096).

The generator's prompts follow one grammar — ``a <colour> <kind> [and a <colour> <kind>]
[bounces|bounce|collide]`` — so the encoder reads them structurally: one token per shape (the sum of
learned colour, kind and slot embeddings, the slot being the drawing order), one for the motion
word and a ``<bos>`` token. Binding a colour to its shape is therefore given by construction and the
DiT's small capacity goes to drawing, not to parsing (a free-form transformer encoder trained from
scratch on the diffusion loss alone was the previous teacher's weak point: it drew the wrong
colours). Features of absent tokens are zero, like Wan's padded umT5 context; the empty prompt
(classifier-free guidance's unconditional branch) is ``<bos>`` alone.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..config import require_int
from .shapes import COLOURS, KINDS

FUNCTION_WORDS: tuple[str, ...] = ("a", "and")
MOTIONS: tuple[str, ...] = ("bounces", "bounce", "collide")
VOCABULARY: tuple[str, ...] = (*FUNCTION_WORDS, *sorted(COLOURS), *KINDS, *MOTIONS)
GRAMMAR = "a <colour> <shape> [and a <colour> <shape>] [bounces|bounce|collide]"
_WORD = re.compile(r"[^\s,.;:!?]+")
_COLOUR_IDS = {name: i for i, name in enumerate(sorted(COLOURS))}
_KIND_IDS = {name: i for i, name in enumerate(KINDS)}
_MOTION_IDS = {name: i for i, name in enumerate(MOTIONS)}


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt's objects in drawing order (``(colour, kind)`` pairs) and its motion word (or None)."""

    shapes: tuple[tuple[str, str], ...]
    motion: str | None


def vocabulary_text() -> str:
    """The grammar and the known words, for error messages and ``--help``."""
    return f"prompts read '{GRAMMAR}'; colours: {', '.join(sorted(COLOURS))}; shapes: {', '.join(KINDS)}"


def parse_prompt(prompt: str, max_shapes: int) -> ParsedPrompt:
    """Parse one prompt (case and punctuation ignored; ``""`` is the unconditional prompt).

    Raises:
        ValueError: naming ``prompt`` and listing the vocabulary, for an unknown word, words out of
            the grammar's order, more than ``max_shapes`` shapes, or a colour used twice.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string; got {type(prompt).__name__}")
    words = _WORD.findall(prompt.lower())
    unknown = sorted({w for w in words if w not in VOCABULARY})
    if unknown:
        raise ValueError(f"prompt {prompt!r}: unknown words {unknown}; {vocabulary_text()}")
    content = [w for w in words if w not in FUNCTION_WORDS]
    motion = content.pop() if content and content[-1] in MOTIONS else None
    if len(content) % 2 or any(
        colour not in COLOURS or kind not in KINDS
        for colour, kind in zip(content[::2], content[1::2], strict=True)
    ):
        raise ValueError(f"prompt {prompt!r} is not in the teacher's grammar; {vocabulary_text()}")
    shapes = tuple(zip(content[::2], content[1::2], strict=True))
    if len(shapes) > max_shapes:
        raise ValueError(f"prompt {prompt!r} names {len(shapes)} shapes; at most {max_shapes} are allowed")
    colours = [colour for colour, _ in shapes]
    if len(set(colours)) != len(colours):
        raise ValueError(f"prompt {prompt!r} uses a colour twice; every shape needs its own colour")
    if motion is not None and not shapes:
        raise ValueError(f"prompt {prompt!r} has a motion but no shape; {vocabulary_text()}")
    return ParsedPrompt(shapes, motion)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape of :class:`TinyTextEncoder`.

    Attributes:
        width: embedding width inside the encoder.
        max_shapes: shape tokens (prompts naming more shapes are refused).
        out_dim: feature width handed to the DiT (Wan2.1's text_dim, 4096).
    """

    width: int = 64
    max_shapes: int = 2
    out_dim: int = 4096

    def __post_init__(self) -> None:
        for name in ("width", "max_shapes", "out_dim"):
            require_int(name, getattr(self, name), low=1)

    @property
    def max_tokens(self) -> int:
        """Context length: ``<bos>``, one token per shape, the motion token."""
        return self.max_shapes + 2

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


class TinyTextEncoder(nn.Module):
    """Prompts → context features ``(B, max_tokens, out_dim)`` (zero where a token is absent)."""

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or TextEncoderConfig()
        self.bos = nn.Parameter(torch.randn(config.width) * 0.02)
        self.colour = nn.Embedding(len(COLOURS), config.width)
        self.kind = nn.Embedding(len(KINDS), config.width)
        self.slot = nn.Embedding(config.max_shapes, config.width)
        self.motion = nn.Embedding(len(MOTIONS), config.width)
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.out_dim)

    def token_ids(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Index tensors of ``prompts``: colour and kind ``(B, S)``, motion ``(B,)`` (-1 = absent)."""
        count, slots = len(prompts), self.config.max_shapes
        colour = torch.full((count, slots), -1, dtype=torch.long)
        kind = torch.full((count, slots), -1, dtype=torch.long)
        motion = torch.full((count,), -1, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            parsed = parse_prompt(prompt, slots)
            for slot, (colour_name, kind_name) in enumerate(parsed.shapes):
                colour[row, slot], kind[row, slot] = _COLOUR_IDS[colour_name], _KIND_IDS[kind_name]
            if parsed.motion is not None:
                motion[row] = _MOTION_IDS[parsed.motion]
        return colour, kind, motion, colour >= 0

    def encode(self, prompts: list[str]) -> Tensor:
        """Parse and encode ``prompts`` → ``(B, max_tokens, out_dim)`` on the encoder's device."""
        device = self.bos.device
        colour, kind, motion, present = (t.to(device) for t in self.token_ids(prompts))
        slots = torch.arange(self.config.max_shapes, device=device)
        shapes = (
            self.colour(colour.clamp(min=0)) + self.kind(kind.clamp(min=0)) + self.slot(slots)
        )  # (B, S, w)
        moves = self.motion(motion.clamp(min=0))[:, None]  # (B, 1, w)
        bos = self.bos.expand(len(prompts), 1, -1)  # (B, 1, w)
        tokens = torch.cat([bos, shapes, moves], dim=1)  # (B, S + 2, w)
        keep = torch.cat(
            [torch.ones_like(present[:, :1]), present, (motion >= 0)[:, None]], dim=1
        )  # (B, S + 2)
        return self.proj(self.norm(tokens)).masked_fill(~keep[..., None], 0.0)

    def forward(self, prompts: list[str]) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(prompts)
