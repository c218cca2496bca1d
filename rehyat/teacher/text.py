"""The teacher's own small text encoder: a fixed word vocabulary, deterministic tokenisation and a
tiny transformer whose features have Wan2.1's text width (4096), trained jointly with the DiT.

Prompts use the generator's words ("a red circle and a blue square collide"); a word outside the
vocabulary is refused with the list of known words. Every prompt starts with a ``<bos>`` token, so
the empty prompt (classifier-free guidance's unconditional branch) is a single token. Features of
padding positions are zero, like Wan's padded umt5 context.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..config import require_int
from .shapes import COLOURS, KINDS

PAD, BOS = "<pad>", "<bos>"
FUNCTION_WORDS: tuple[str, ...] = ("a", "and", "bounces", "bounce", "collide")
VOCABULARY: tuple[str, ...] = (PAD, BOS, *FUNCTION_WORDS, *sorted(COLOURS), *KINDS)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape of :class:`TinyTextEncoder`.

    Attributes:
        width: token width inside the encoder.
        layers: transformer layers.
        heads: attention heads (``width`` must be a multiple).
        max_tokens: context length (``<bos>`` + words, padded); longer prompts are refused.
        out_dim: feature width handed to the DiT (Wan2.1's text_dim, 4096).
    """

    width: int = 64
    layers: int = 2
    heads: int = 2
    max_tokens: int = 12
    out_dim: int = 4096

    def __post_init__(self) -> None:
        for name in ("width", "layers", "heads", "max_tokens", "out_dim"):
            require_int(name, getattr(self, name), low=1)
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def tokenize(prompts: list[str], max_tokens: int) -> Tensor:
    """Token ids ``(B, max_tokens)``: ``<bos>``, the words of each prompt, then ``<pad>``.

    Raises:
        ValueError: naming ``prompt`` for an unknown word or a prompt longer than ``max_tokens - 1`` words.
    """
    index = {word: i for i, word in enumerate(VOCABULARY)}
    ids = torch.full((len(prompts), max_tokens), index[PAD], dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = _WORD.findall(prompt.lower())
        unknown = sorted({w for w in words if w not in index or w in (PAD, BOS)})
        if unknown:
            known = ", ".join(VOCABULARY[2:])
            raise ValueError(
                f"prompt {prompt!r} has words the teacher does not know: {unknown}; known: {known}"
            )
        if len(words) > max_tokens - 1:
            raise ValueError(
                f"prompt {prompt!r} has {len(words)} words; at most {max_tokens - 1} are allowed"
            )
        ids[row, 0] = index[BOS]
        ids[row, 1 : 1 + len(words)] = torch.tensor([index[w] for w in words], dtype=torch.long)
    return ids


class TinyTextEncoder(nn.Module):
    """Prompts → context features ``(B, max_tokens, out_dim)`` (zero at padding positions)."""

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or TextEncoderConfig()
        self.embedding = nn.Embedding(len(VOCABULARY), config.width)
        self.position = nn.Parameter(torch.randn(config.max_tokens, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, 2 * config.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.proj = nn.Linear(config.width, config.out_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens`` ``(B, L)`` ids → ``(B, L, out_dim)``."""
        pad = tokens == 0  # (B, L)
        x = self.embedding(tokens) + self.position[: tokens.shape[1]]
        x = self.encoder(x, src_key_padding_mask=pad)
        return self.proj(self.norm(x)).masked_fill(pad[..., None], 0.0)

    def encode(self, prompts: list[str]) -> Tensor:
        """Tokenise and encode ``prompts`` → ``(B, max_tokens, out_dim)`` on the encoder's device."""
        tokens = tokenize(prompts, self.config.max_tokens).to(self.embedding.weight.device)
        return self(tokens)
