"""Checks of the demo's options, before any work, worded in the options a user sets (``--chunk-frames``).

Each check raises a one-line ``ValueError`` naming the option and what it accepts; the CLI reports
it with the ``demo`` subcommand's usage.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..atomic import check_new_file
from ..config import HybridAttentionConfig
from ..file_names import check_name_length
from ..teacher.text import parse_prompt, vocabulary_text
from ..training.options import min_latent_frames


def check_output_folder(path: str | os.PathLike[str], parameter: str = "--output") -> Path:
    """``path`` if the demo can write its files into it (an existing folder, or one it can create).

    Refused, naming ``parameter``: an existing file (or a link to one) — the demo writes a folder
    and never writes over a file —, a path under a file, a place where no folder can be created (tried
    for real, with a probe folder that is removed at once), and a name (or folder name) over 255 bytes.
    """
    path = Path(path)
    check_name_length(path, parameter)
    if path.is_dir():
        _probe(path, path, parameter)
        return path
    if os.path.lexists(path):
        kind = "a link" if path.is_symlink() else "a file"
        raise ValueError(
            f"{parameter} {path} is {kind}, not a folder: the demo writes a folder of files and never "
            "writes over a file — choose a new folder name"
        )
    check_new_file(path, parameter)  # under a file, unwritable by its mode, too long: refused by name
    existing = path.parent if str(path.parent) else Path(".")
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    _probe(existing, path, parameter)
    return path


def _probe(folder: Path, path: Path, parameter: str) -> None:
    """Create and remove a folder in ``folder``: the real test of writability (root, read-only mounts)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rehyat-probe-", dir=folder))
    except OSError as err:
        raise ValueError(
            f"{parameter} {path}: cannot write in {folder} ({err.strerror or err}) — choose another place"
        ) from None


def check_prompt(prompt: str, max_shapes: int, parameter: str = "--prompt") -> None:
    """Refuse a prompt the teacher cannot draw: empty, unknown words, out of grammar, no shape."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{parameter} is empty: say what to draw; {vocabulary_text()}")
    try:
        parsed = parse_prompt(prompt, max_shapes)
    except ValueError as err:
        raise ValueError(f"{parameter}: {err}") from None
    if not parsed.shapes:
        raise ValueError(f"{parameter} {prompt!r} names no shape; {vocabulary_text()}")


def max_chunk_frames(overlap_frames: int, training_frames: int) -> int:
    """Largest Tc whose linear part φ's distillation on ``training_frames``-frame clips still trains
    (0 if none)."""
    best = 0
    for chunk in range(1, training_frames + 1):
        attention = HybridAttentionConfig(chunk_frames=chunk, overlap_frames=overlap_frames)
        if min_latent_frames(attention) <= training_frames:
            best = chunk
    return best


def max_overlap_frames(chunk_frames: int, training_frames: int) -> int | None:
    """Largest To with which φ's distillation on ``training_frames``-frame clips still trains
    (None if none)."""
    best = None
    for overlap in range(0, training_frames + 1):
        attention = HybridAttentionConfig(chunk_frames=chunk_frames, overlap_frames=overlap)
        if min_latent_frames(attention) <= training_frames:
            best = overlap
    return best


def check_chunking(chunk_frames: int, overlap_frames: int, training_frames: int) -> None:
    """Refuse a Tc / To that φ cannot be distilled for on the teacher's ``training_frames``-frame clips.

    Stage 1 distils φ on clips of the teacher's training length (the length a user cannot change); a
    chunk plus its overlap must leave some frames to the linear part there, else φ learns nothing.
    """
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be an integer ≥ 1; got {chunk_frames!r}")
    if isinstance(overlap_frames, bool) or not isinstance(overlap_frames, int) or overlap_frames < 0:
        raise ValueError(f"--overlap-frames must be an integer ≥ 0; got {overlap_frames!r}")
    attention = HybridAttentionConfig(chunk_frames=chunk_frames, overlap_frames=overlap_frames)
    if min_latent_frames(attention) <= training_frames:
        return
    why = (
        f"φ is distilled on the teacher's {training_frames}-frame training clips, where a chunk and "
        "its overlap must leave frames to the linear part"
    )
    top_chunk = max_chunk_frames(overlap_frames, training_frames)
    if chunk_frames > top_chunk and top_chunk >= 1:
        raise ValueError(
            f"--chunk-frames {chunk_frames} is out of range: with --overlap-frames {overlap_frames} it must "
            f"be in [1, {top_chunk}] ({why})"
        )
    top_overlap = max_overlap_frames(chunk_frames, training_frames)
    if top_overlap is None:
        raise ValueError(f"--chunk-frames {chunk_frames} is out of range ({why})")
    raise ValueError(
        f"--overlap-frames {overlap_frames} is out of range: with --chunk-frames {chunk_frames} it must be "
        f"in [0, {top_overlap}] ({why})"
    )
