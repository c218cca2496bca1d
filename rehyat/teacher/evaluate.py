"""Does a clip show its prompt? Scores a generated clip against the generator's ground truth.

The generator (:mod:`rehyat.teacher.shapes`) says what a clip of a prompt must show: the prompted
shapes, each in its own colour and kind, on black, moving continuously at ``min_speed`` …
``max_speed`` pixels per frame. Per clip this module measures, with a colour detector:

- ``presence``: per prompted colour, the share of frames in which a solid shape of it is detected
  (:func:`shape_mask`: scattered speckle does not count);
- ``spurious_frames``: share of frames showing a colour the prompt did not ask for;
- ``kind_correct``: share of classified detections whose kind matches the prompt — circle or
  square from the shape's extent along the diagonals over its extent along the axes (1 for a circle,
  √2 for the generator's axis-aligned squares); detections touching another shape or the frame
  edge are not classified;
- ``mean_speed``: mean centroid speed of the prompted shapes (pixels per frame);
- ``continuous_pairs``: share of consecutive detections of a prompted colour whose centroid moves at
  most ``2 × max_speed`` (the generator never moves a shape more than ``max_speed``; the factor
  covers collisions and the detector's jitter);
- ``blank_frames``: share of frames with no shape detected at all;
- ``seam_ratio`` (with ``chunk_frames``): mean frame-to-frame change across chunk boundaries over the
  change elsewhere (≈ 1 for a clip without seams).

:func:`summarise` pools clips and checks the targets of :data:`TEACHER_TARGETS` (issue "A teacher
worth converting") or any other :class:`Targets`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import frame_differences
from .shapes import COLOURS, KINDS, ClipSpec
from .text import parse_prompt

MIN_COVERAGE = 0.5  # a pixel is of a colour when covered by more than half
MIN_AREA = 4.0  # pixels: a colour covering less is absent
SQUARE_RATIO = 1.2  # diagonal over axial extent above which a shape is a square (circle 1, square √2)
JUMP_FACTOR = 2.0  # a centroid moving more than this × max_speed in one frame is a jump
SPEED_SLACK = 0.5  # mean speed accepted in [slack·min_speed, max_speed / slack]


@dataclass(frozen=True)
class ClipScore:
    """The measures of one clip (see the module docstring); None where nothing could be measured."""

    prompt: str
    frames: int
    presence: dict[str, float]
    spurious_frames: float
    kind_correct: float | None
    kind_detections: int
    mean_speed: float | None
    continuous_pairs: float | None
    blank_frames: float
    seam_ratio: float | None

    @property
    def min_presence(self) -> float | None:
        """The least present prompted colour's share of frames (None for an empty prompt)."""
        return min(self.presence.values()) if self.presence else None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return {**asdict(self), "min_presence": self.min_presence}


@dataclass(frozen=True)
class Targets:
    """Pass thresholds of pooled scores (every share is of frames, detections or frame pairs)."""

    presence: float = 0.95
    spurious: float = 0.05
    kind: float = 0.85
    continuous: float = 0.95
    blank: float | None = None
    seam_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


TEACHER_TARGETS = Targets()
STUDENT_TARGETS = Targets(
    presence=0.90, spurious=0.05, kind=0.80, continuous=0.95, blank=0.02, seam_ratio=1.25
)


def diagonal_ratio(mask: Tensor) -> float | None:
    """Extent of a mask's pixel centres along the two diagonals over their extent along the axes.

    1 for a disc, √2 for an axis-aligned square (its corners stick out along the diagonals); None
    for an empty mask.
    """
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    x, y = xs.double(), ys.double()
    axial = float((x.max() - x.min()) + (y.max() - y.min()))
    diagonal = float(((x + y).amax() - (x + y).amin()) + ((x - y).amax() - (x - y).amin())) / math.sqrt(2)
    return diagonal / axial if axial > 0 else 1.0


def shape_mask(pixels: Tensor, colour: str) -> Tensor:
    """Per-frame mask ``(T, H, W)`` of the solid regions drawn in ``colour``.

    A pixel is of the colour when its RGB is explained by the colour at more than half coverage
    (black background, anti-aliased edges); a shape is what survives an opening: the pixels whose
    whole 3×3 neighbourhood is of the colour (the core), grown back by one pixel within the colour.
    Scattered speckle — a half-denoised clip's noise — has no core and is not a shape.
    """
    rgb = (pixels.float() + 1) / 2  # (3, T, H, W)
    ref = torch.tensor(COLOURS[colour])[:, None, None, None]
    coverage = ((rgb * ref).sum(dim=0) / ref.square().sum()).clamp(0, 1)  # (T, H, W)
    explained = (rgb - coverage * ref).abs().amax(dim=0) <= 0.25 * coverage + 0.02
    mask = (explained & (coverage > MIN_COVERAGE)).float()[:, None]  # (T, 1, H, W)
    core = -F.max_pool2d(-mask, 3, stride=1, padding=1)  # erosion (outside the frame counts as colour)
    grown = F.max_pool2d(core, 3, stride=1, padding=1)
    return (grown * mask)[:, 0] > 0


def detect(pixels: Tensor, colours: list[str]) -> tuple[list[dict[str, tuple | None]], dict[str, Tensor]]:
    """Per frame, each colour's shape centroid and area ``(x, y, area_px)`` or None, and the masks.

    Coordinates are the generator's (pixel centres at +0.5); a colour whose shape covers fewer
    than :data:`MIN_AREA` pixels in a frame is absent.
    """
    frames, size = pixels.shape[1], pixels.shape[-1]
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    found: list[dict[str, tuple | None]] = [{} for _ in range(frames)]
    masks = {c: shape_mask(pixels, c) for c in colours}
    for colour, mask in masks.items():
        area = mask.sum(dim=(1, 2)).float()  # (T,)
        xs = (mask.sum(dim=1).float() * centres).sum(dim=1)  # (T,)
        ys = (mask.sum(dim=2).float() * centres).sum(dim=1)
        for t in range(frames):
            a = float(area[t])
            found[t][colour] = (float(xs[t]) / a, float(ys[t]) / a, a) if a >= MIN_AREA else None
    return found, masks


def classify_kind(mask: Tensor) -> str | None:
    """``"circle"`` or ``"square"`` of one detected shape's mask ``(H, W)`` (None when empty)."""
    ratio = diagonal_ratio(mask)
    if ratio is None:
        return None
    return KINDS[1] if ratio >= SQUARE_RATIO else KINDS[0]


def score_clip(
    pixels: Tensor, prompt: str, spec: ClipSpec | None = None, chunk_frames: int | None = None
) -> ClipScore:
    """Score ``pixels`` ``(3, T, H, W)`` in [-1, 1] against what ``prompt`` asks for.

    Args:
        pixels: the clip.
        prompt: a generator prompt (parsed with the teacher's grammar).
        spec: the generator's settings (speed range); defaults to :class:`ClipSpec`.
        chunk_frames: Tc, to measure the seam ratio (None: not measured).
    """
    if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[0] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be a clip (3, T, H, W); got {shape}")
    spec = spec or ClipSpec()
    parsed = parse_prompt(prompt, max_shapes=len(COLOURS))
    wanted = dict(parsed.shapes)  # colour → kind
    frames = pixels.shape[1]
    found, masks = detect(pixels, list(COLOURS))
    presence = {c: sum(f[c] is not None for f in found) / frames for c in wanted}
    others = [c for c in COLOURS if c not in wanted]
    spurious = sum(any(f[c] is not None for c in others) for f in found) / frames
    blank = sum(all(f[c] is None for c in COLOURS) for f in found) / frames

    kinds_right = kinds_total = 0
    for t, detections in enumerate(found):
        present = [c for c in COLOURS if detections[c] is not None]
        for colour, kind in wanted.items():
            if detections[colour] is None or not _isolated(masks, colour, present, t, pixels.shape[-1]):
                continue
            kinds_total += 1
            kinds_right += classify_kind(masks[colour][t]) == kind

    speeds: list[float] = []
    for colour in wanted:
        for before, after in zip(found, found[1:], strict=False):
            if before[colour] is not None and after[colour] is not None:
                speeds.append(math.dist(before[colour][:2], after[colour][:2]))
    limit = JUMP_FACTOR * spec.max_speed
    return ClipScore(
        prompt=prompt,
        frames=frames,
        presence=presence,
        spurious_frames=spurious,
        kind_correct=kinds_right / kinds_total if kinds_total else None,
        kind_detections=kinds_total,
        mean_speed=sum(speeds) / len(speeds) if speeds else None,
        continuous_pairs=sum(s <= limit for s in speeds) / len(speeds) if speeds else None,
        blank_frames=blank,
        seam_ratio=None if chunk_frames is None else seam_ratio(pixels, chunk_frames),
    )


def _isolated(masks: dict, colour: str, present: list[str], t: int, size: int) -> bool:
    """Whether ``colour``'s shape in frame t touches neither the frame edge nor another shape."""
    mask = masks[colour][t]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.min() == 0 or xs.min() == 0 or ys.max() == size - 1 or xs.max() == size - 1:
        return False
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
    for other in present:
        if other != colour and other in masks and bool((grown & masks[other][t]).any()):
            return False
    return True


def seam_ratio(pixels: Tensor, chunk_frames: int) -> float | None:
    """Mean frame change across chunk boundaries (frame ``k·Tc − 1 → k·Tc``) over the change elsewhere.

    The clip's latent frames are its video frames (no temporal compression). None when the clip has
    no boundary or no other transition; a clip without any change elsewhere gives inf for a change at
    a boundary (1.0 when there is none at all).
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be ≥ 1; got {chunk_frames}")
    unit = ((pixels.float() + 1) / 2).permute(1, 2, 3, 0)  # (T, H, W, 3) in [0, 1]
    if unit.shape[0] < 2:
        return None
    changes = frame_differences(unit)  # (T-1,): entry t is frame t → t+1
    at_seam = torch.zeros_like(changes, dtype=torch.bool)
    at_seam[chunk_frames - 1 :: chunk_frames] = True
    if not bool(at_seam.any()) or bool(at_seam.all()):
        return None
    boundary, other = float(changes[at_seam].mean()), float(changes[~at_seam].mean())
    if other == 0:
        return 1.0 if boundary == 0 else math.inf
    return boundary / other


def summarise(
    scores: list[ClipScore], spec: ClipSpec | None = None, targets: Targets = TEACHER_TARGETS
) -> dict:
    """Pool clip scores (frames, detections and frame pairs weighted by their counts) and check targets.

    Returns a dict with the pooled measures, ``moving`` (share of clips whose mean speed lies within
    the generator's range, with slack :data:`SPEED_SLACK`), ``passes`` per target and ``all_pass``.
    """
    if not scores:
        raise ValueError("scores must hold at least one clip score")
    spec = spec or ClipSpec()
    frames = sum(s.frames for s in scores)
    colour_frames = sum(s.frames * len(s.presence) for s in scores)
    presence = (
        sum(s.frames * sum(s.presence.values()) for s in scores) / colour_frames if colour_frames else None
    )
    kind_total = sum(s.kind_detections for s in scores)
    kind = (
        sum((s.kind_correct or 0.0) * s.kind_detections for s in scores) / kind_total if kind_total else None
    )
    pairs = [(s.continuous_pairs, s.frames - 1) for s in scores if s.continuous_pairs is not None]
    continuous = sum(c * n for c, n in pairs) / sum(n for _, n in pairs) if pairs else None
    low, high = SPEED_SLACK * spec.min_speed, spec.max_speed / SPEED_SLACK
    speeds = [s.mean_speed for s in scores if s.mean_speed is not None]
    seams = [s.seam_ratio for s in scores if s.seam_ratio is not None and math.isfinite(s.seam_ratio)]
    pooled = {
        "clips": len(scores),
        "presence": presence,
        "min_presence_clip": min(
            (s.min_presence for s in scores if s.min_presence is not None), default=None
        ),
        "spurious_frames": sum(s.spurious_frames * s.frames for s in scores) / frames,
        "kind_correct": kind,
        "kind_detections": kind_total,
        "continuous_pairs": continuous,
        "mean_speed": sum(speeds) / len(speeds) if speeds else None,
        "moving": sum(low <= v <= high for v in speeds) / len(scores),
        "speed_range": [low, high],
        "blank_frames": sum(s.blank_frames * s.frames for s in scores) / frames,
        "seam_ratio": sum(seams) / len(seams) if seams else None,
    }
    passes = {
        "presence": presence is not None and presence >= targets.presence,
        "spurious": pooled["spurious_frames"] <= targets.spurious,
        "kind": kind is not None and kind >= targets.kind,
        "continuous": continuous is not None and continuous >= targets.continuous,
        "moving": pooled["moving"] >= 0.95,
    }
    if targets.blank is not None:
        passes["blank"] = pooled["blank_frames"] <= targets.blank
    if targets.seam_ratio is not None:
        passes["seam_ratio"] = pooled["seam_ratio"] is not None and pooled["seam_ratio"] <= targets.seam_ratio
    return {**pooled, "targets": targets.to_dict(), "passes": passes, "all_pass": all(passes.values())}


HELD_OUT_SEED = 5_000_000  # far from the training clips' seeds (1,000,000 + step·batch + i)


def held_out_pairs(count: int, first_seed: int = HELD_OUT_SEED) -> list[tuple[str, int]]:
    """``count`` (prompt, seed) pairs no training step saw: the generator's prompt of each seed."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer ≥ 1; got {count!r}")
    from .shapes import generate_clip

    return [
        (generate_clip(seed, frames=ClipSpec().frames).prompt, seed)
        for seed in range(first_seed, first_seed + count)
    ]
