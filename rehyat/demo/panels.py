"""The demo's side-by-side panels: generate one clip per model and length, judge it, write the videos.

Panels are the softmax teacher and any number of ReHyAt conversions of it (the demo's are the
student — stage 1 + stage 2 — and stage 1 alone), all from the same prompt, seed and noise. Every
clip is judged with the teacher's evaluator (:func:`rehyat.teacher.evaluate.score_clip`: presence
per prompted shape, spurious colours, kind accuracy, motion continuity, blank frames and the seam
ratio at the ReHyAt chunk boundaries) — one detector for the whole pack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..metrics import psnr_clip, ssim_clip
from ..models.wan_rehyat import forward_recurrent
from ..teacher.evaluate import STUDENT_TARGETS, Targets, score_clip, summarise
from ..teacher.model import SamplingConfig, Teacher
from ..teacher.shapes import ClipSpec
from .media import side_by_side_frames, write_gif, write_mp4
from .memory import measure_call

TEACHER = "teacher"
LABELS = {
    "teacher": "teacher (softmax)",
    "student": "ReHyAt student (stage 1 + 2)",
    "stage1": "ReHyAt stage 1 only (no fine-tune)",
}

Clips = dict[int, dict[str, Tensor]]  # length → panel → pixels (3, T, H, W) in [-1, 1]


def velocity_of(model: Teacher | None):
    """The velocity function that samples ``model`` recurrently (None: the teacher's own softmax DiT)."""
    if model is None:
        return None
    return lambda x, t, context: forward_recurrent(model.dit, x, t, context)


def generate_panels(
    teacher: Teacher,
    models: Mapping[str, Teacher],
    prompt: str,
    seed: int,
    lengths: list[int],
    sampling: SamplingConfig,
    *,
    progress: bool = True,
) -> tuple[Clips, dict[int, dict[str, float]]]:
    """One clip per length for the teacher (panel ``"teacher"``) and each converted model in ``models``.

    Every clip starts from the same noise (the seed's); converted models are sampled chunk by chunk
    (:func:`rehyat.models.wan_rehyat.forward_recurrent`). Progress bars show every sampling run.

    Returns:
        ``(clips, seconds)``: ``clips[length][panel]`` and the wall seconds of each generation.
    """
    from tqdm import tqdm

    if TEACHER in models:
        raise ValueError(f"models must not use the panel name {TEACHER!r} (it is the softmax teacher's)")
    clips: Clips = {}
    seconds: dict[int, dict[str, float]] = {}
    for length in lengths:
        clips[length], seconds[length] = {}, {}
        for name, model in ((TEACHER, None), *models.items()):
            bar = tqdm(
                total=sampling.steps, desc=f"generating {length} frames ({name})", disable=not progress,
                unit="step",
            )
            velocity = velocity_of(model)
            pixels, took, _ = measure_call(
                lambda v=velocity, b=bar, n=length: teacher.generate(
                    prompt, n, seed, velocity=v, sampling=sampling, callback=lambda i, x: b.update(1)
                )
            )
            bar.close()
            clips[length][name], seconds[length][name] = pixels, took
    return clips, seconds


def judge_panels(
    clips: Clips,
    prompt: str,
    spec: ClipSpec,
    chunk_frames: int,
    targets: Targets = STUDENT_TARGETS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """What a creator would judge, per panel and length: ``result[panel][str(length)]``.

    Each entry is the evaluator's :class:`rehyat.teacher.evaluate.ClipScore` (``presence`` per prompted
    colour, ``spurious_frames``, ``kind_correct``, ``continuous_pairs`` — motion continuity —,
    ``blank_frames``, ``seam_ratio`` at the Tc boundaries, …), the ``passes`` of ``targets`` (the
    student's targets by default; ``every_colour_present``: the least present prompted colour reaches
    the presence target) and, for the ReHyAt panels, PSNR / SSIM against the teacher's clip of that
    length.
    """
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for length, panels in clips.items():
        reference = panels.get(TEACHER)
        for name, pixels in panels.items():
            score = score_clip(pixels, prompt, spec, chunk_frames)
            passes = summarise([score], spec, targets)["passes"]
            least = score.min_presence
            passes["every_colour_present"] = least is not None and least >= targets.presence
            entry = {**score.to_dict(), "passes": passes}
            if reference is not None and name != TEACHER:
                a, b = _unit(reference), _unit(pixels)
                entry["psnr_vs_teacher_db"] = _finite(psnr_clip(b, a))
                entry["ssim_vs_teacher"] = _finite(ssim_clip(b, a))
            result.setdefault(name, {})[str(length)] = _finite_tree(entry)
    return result


def write_panel_videos(
    panels: Mapping[str, Tensor],
    path: str | Path,
    *,
    labels: Mapping[str, str] | None = None,
    training_frames: int | None = None,
    caption: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str | None]:
    """Write ``<path>.gif`` (always) and ``<path>.mp4`` (with PyAV) of the panels side by side.

    Panels are labelled (``labels`` or :data:`LABELS`) and scaled up with nearest neighbour to at least
    384 px each. A missing PyAV is said in one line, not silently.

    Returns:
        ``{"gif": file name, "mp4": file name or None}``.
    """
    path = Path(path)
    names = list(panels)
    labels = {**LABELS, **(labels or {})}
    images = side_by_side_frames(
        [panels[n] for n in names], [labels.get(n, n) for n in names], training_frames, caption=caption
    )
    gif = write_gif(images, path.with_suffix(".gif"))
    mp4 = write_mp4(images, path.with_suffix(".mp4"))
    if mp4 is None:
        log(f"skipped {path.with_suffix('.mp4').name}: PyAV is not installed (pip install av); see the GIF")
    return {"gif": gif.name, "mp4": None if mp4 is None else mp4.name}


def _unit(pixels: Tensor) -> Tensor:
    """``(3, T, H, W)`` in [-1, 1] → ``(T, H, W, 3)`` in [0, 1]."""
    return ((pixels.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _finite_tree(value: Any) -> Any:
    """``value`` with inf / NaN floats replaced by None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _finite_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_tree(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    return value
