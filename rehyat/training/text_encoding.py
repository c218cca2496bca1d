"""Prompt → Wan2.1 text features with a umT5 encoder from ``transformers`` (optional dependency).

Wan2.1 conditions on umT5-XXL's last hidden states, padded with zeros to 512 tokens. This module
loads a ``transformers`` ``UMT5EncoderModel`` and its tokenizer from a local directory (no
download) and returns ``(512, d_model)`` features per prompt, zero past the prompt's tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

WAN_TEXT_TOKENS = 512


def load_umt5(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
):
    """``(tokenizer, UMT5EncoderModel)`` from a local directory (``local_files_only``)."""
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError as err:
        raise ValueError(
            "--text-encoder needs the 'transformers' and 'sentencepiece' packages: "
            "pip install 'comfyui-rehyat[text]'"
        ) from err
    if not os.path.isdir(path):
        raise ValueError(f"--text-encoder {path!r} is not a directory with a umT5 encoder and its tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = UMT5EncoderModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype).to(device).eval()
    return tokenizer, model


@torch.no_grad()
def encode_prompts(
    tokenizer, encoder, prompts: Sequence[str], max_tokens: int = WAN_TEXT_TOKENS
) -> list[Tensor]:
    """Features ``(max_tokens, d_model)`` (fp32, CPU) per prompt; rows past the prompt are zero."""
    device = next(encoder.parameters()).device
    out = []
    for prompt in prompts:
        tokens = tokenizer(
            [prompt], padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt"
        )
        mask = tokens["attention_mask"].to(device)
        hidden = encoder(input_ids=tokens["input_ids"].to(device), attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # (1, L, d) zero past the prompt
        out.append(hidden[0].float().cpu())
    return out
