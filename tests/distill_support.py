"""Helpers shared by the distillation tests (CLI and ComfyUI node)."""

from __future__ import annotations

import io

CORPUS = [
    "a red fox jumps over the lazy dog",
    "a cat walks on the beach at sunset",
    "waves crash on rocks",
    "the city at night with neon lights",
] * 20


def tiny_sentencepiece_model() -> bytes:
    """A real 40-piece unigram SentencePiece model (T5 ids: pad 0, eos 1, unk 2) trained on :data:`CORPUS`.

    Needs ``sentencepiece`` (callers ``pytest.importorskip`` it first).
    """
    import sentencepiece as spm

    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model_bytes,
        vocab_size=40,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    return model_bytes.getvalue()
