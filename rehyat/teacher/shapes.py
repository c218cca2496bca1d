"""Procedural clips of coloured shapes that move, bounce off the walls and collide, with ground truth.

A clip is fully determined by its seed (Python's ``random.Random``, same numbers on every
platform): 1–2 shapes (circle or square, six colours, distinct colours within a clip) start at
random positions with random velocities, bounce elastically off the frame edges and off each
other (equal masses, exchange of the normal velocity component), and are rendered on black.
Every frame carries its ground truth — centre, half-size, colour and kind of every shape — and
the clip carries a prompt describing it ("a red circle and a blue square collide").

Pixel values are in [-1, 1] (black = -1), frames are ``(3, H, W)``; anti-aliased by 4×4
supersampling so sub-pixel motion is visible.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..config import require_int

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.15, 0.1),
    "green": (0.1, 0.9, 0.2),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "cyan": (0.1, 0.9, 0.95),
    "magenta": (0.95, 0.15, 0.9),
}
KINDS: tuple[str, ...] = ("circle", "square")
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ClipSpec:
    """What the generator draws: frame size, clip length and the ranges of the random scene.

    Attributes:
        frames: frames per clip.
        size: frame height = width in pixels.
        max_shapes: 1..max_shapes shapes per clip.
        min_radius, max_radius: half-size of a shape in pixels (circle radius, half the square side).
        min_speed, max_speed: pixels per frame.
    """

    frames: int = 16
    size: int = 32
    max_shapes: int = 2
    min_radius: float = 4.0
    max_radius: float = 6.0
    min_speed: float = 0.8
    max_speed: float = 2.0

    def __post_init__(self) -> None:
        require_int("frames", self.frames, low=1)
        require_int("size", self.size, low=8)
        require_int("max_shapes", self.max_shapes, low=1, high=len(COLOURS))
        if not 0 < self.min_radius <= self.max_radius < self.size / 4:
            raise ValueError(
                f"need 0 < min_radius ≤ max_radius < size/4; got {self.min_radius}, "
                f"{self.max_radius} for size {self.size}"
            )
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 ≤ min_speed ≤ max_speed; got {self.min_speed}, {self.max_speed}")

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class ShapeState:
    """Ground truth of one shape in one frame (pixel coordinates, x to the right, y down)."""

    kind: str
    colour: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Clip:
    """A generated clip: pixels, per-frame ground truth and the prompt.

    Attributes:
        pixels: ``(3, T, H, W)`` in [-1, 1].
        truth: ``truth[t]`` lists every shape's state in frame t (drawing order: later on top).
        prompt: the text describing the clip.
        collided: whether two shapes touched during the clip.
        seed: the seed that generated it.
    """

    pixels: Tensor
    truth: list[list[ShapeState]]
    prompt: str
    collided: bool
    seed: int


@dataclass
class _Body:
    kind: str
    colour: str
    x: float
    y: float
    vx: float
    vy: float
    radius: float


def generate_clip(seed: int, spec: ClipSpec | None = None, frames: int | None = None) -> Clip:
    """The clip of ``seed`` (``frames`` overrides ``spec.frames``: the same scene, longer or shorter)."""
    spec = spec or ClipSpec()
    frames = spec.frames if frames is None else frames
    require_int("frames", frames, low=1)
    rng = random.Random(seed)
    bodies = _initial_bodies(rng, spec)
    truth, collided = [], False
    for _ in range(frames):
        truth.append([ShapeState(b.kind, b.colour, b.x, b.y, b.radius) for b in bodies])
        collided |= _step(bodies, spec.size)
    return Clip(
        pixels=render(truth, spec.size),
        truth=truth,
        prompt=describe(bodies, collided),
        collided=collided,
        seed=seed,
    )


def describe(bodies, collided: bool) -> str:
    """The prompt of a scene: its shapes in drawing order and what they do."""
    names = [f"a {b.colour} {b.kind}" for b in bodies]
    if len(names) == 1:
        return f"{names[0]} bounces"
    return " and ".join(names) + (" collide" if collided else " bounce")


def _initial_bodies(rng: random.Random, spec: ClipSpec) -> list[_Body]:
    count = rng.randint(1, spec.max_shapes)
    colours = rng.sample(sorted(COLOURS), count)
    bodies: list[_Body] = []
    for colour in colours:
        kind = rng.choice(KINDS)
        radius = rng.uniform(spec.min_radius, spec.max_radius)
        for _attempt in range(100):  # place without overlapping earlier shapes
            x = rng.uniform(radius, spec.size - radius)
            y = rng.uniform(radius, spec.size - radius)
            if all(math.hypot(x - b.x, y - b.y) > radius + b.radius + 1 for b in bodies):
                break
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(spec.min_speed, spec.max_speed)
        bodies.append(_Body(kind, colour, x, y, speed * math.cos(angle), speed * math.sin(angle), radius))
    return bodies


def _step(bodies: list[_Body], size: int) -> bool:
    """Advance one frame: move, bounce off walls, resolve collisions. Returns whether any collided.

    Collisions are resolved after the wall bounce, so a shape pushed apart from another may cross
    an edge by a fraction of a pixel for a frame (it bounces back on the next one).
    """
    collided = False
    for b in bodies:
        b.x += b.vx
        b.y += b.vy
        if b.x < b.radius:
            b.x, b.vx = 2 * b.radius - b.x, abs(b.vx)
        elif b.x > size - b.radius:
            b.x, b.vx = 2 * (size - b.radius) - b.x, -abs(b.vx)
        if b.y < b.radius:
            b.y, b.vy = 2 * b.radius - b.y, abs(b.vy)
        elif b.y > size - b.radius:
            b.y, b.vy = 2 * (size - b.radius) - b.y, -abs(b.vy)
    for i, a in enumerate(bodies):
        for b in bodies[i + 1 :]:
            dx, dy = b.x - a.x, b.y - a.y
            dist = math.hypot(dx, dy)
            if dist >= a.radius + b.radius or dist == 0:
                continue
            nx, ny = dx / dist, dy / dist
            approach = (a.vx - b.vx) * nx + (a.vy - b.vy) * ny
            if approach > 0:  # moving towards each other: exchange the normal components
                a.vx, a.vy = a.vx - approach * nx, a.vy - approach * ny
                b.vx, b.vy = b.vx + approach * nx, b.vy + approach * ny
            push = (a.radius + b.radius - dist) / 2  # separate the overlap
            a.x, a.y, b.x, b.y = a.x - push * nx, a.y - push * ny, b.x + push * nx, b.y + push * ny
            collided = True
    return collided


def render(truth: list[list[ShapeState]], size: int) -> Tensor:
    """Draw every frame's shapes on black: ``(3, T, H, W)`` in [-1, 1], anti-aliased."""
    fine = size * SUPERSAMPLE
    centres = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel coordinates
    ys, xs = centres[:, None], centres[None, :]
    frames = torch.zeros(len(truth), 3, size, size)
    for t, shapes in enumerate(truth):
        image = torch.zeros(3, fine, fine)
        for s in shapes:
            if s.kind == "circle":
                inside = (xs - s.x) ** 2 + (ys - s.y) ** 2 <= s.radius**2
            else:
                inside = ((xs - s.x).abs() <= s.radius) & ((ys - s.y).abs() <= s.radius)
            colour = torch.tensor(COLOURS[s.colour])[:, None, None]
            image = torch.where(inside, colour, image)
        frames[t] = torch.nn.functional.avg_pool2d(image[None], SUPERSAMPLE)[0]
    return (frames * 2 - 1).permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)


def detect_shapes(
    pixels: Tensor,
    colours: list[str],
    tolerance: float = 0.25,
    min_coverage: float = 0.05,
    min_area: float = 2.0,
) -> list[dict[str, tuple | None]]:
    """A simple colour detector: per frame, each colour's coverage-weighted centroid (or None).

    A pixel's coverage by a colour c is its RGB projected on c (black background, anti-aliased
    edges: pixel = coverage·c); pixels whose RGB differs from coverage·c by more than
    ``tolerance``·coverage (+0.02) belong to something else and are ignored.

    Args:
        pixels: ``(3, T, H, W)`` in [-1, 1].
        colours: colour names to look for.
        tolerance: max-abs RGB residual of a pixel explained by the colour, relative to its coverage.
        min_coverage: pixels covered less than this are ignored (0.05 keeps anti-aliased edges of
            rendered clips; ~0.5 ignores the dim speckle of generated ones).
        min_area: a colour covering fewer pixels than this in a frame is absent (None).

    Returns:
        ``result[t][colour] = (x, y, area_px)`` or None, in the generator's pixel coordinates.
    """
    rgb = (pixels.float() + 1) / 2  # (3, T, H, W)
    _, frames, h, w = rgb.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    result: list[dict[str, tuple | None]] = [{} for _ in range(frames)]
    for colour in colours:
        ref = torch.tensor(COLOURS[colour])[:, None, None, None]
        coverage = ((rgb * ref).sum(dim=0) / ref.square().sum()).clamp(0, 1)  # (T, H, W)
        explained = (rgb - coverage * ref).abs().amax(dim=0) <= tolerance * coverage + 0.02
        weight = torch.where(explained & (coverage > min_coverage), coverage, torch.zeros_like(coverage))
        area = weight.sum(dim=(1, 2))
        for t in range(frames):
            if area[t] < min_area:
                result[t][colour] = None
                continue
            cx = float((weight[t] * xs).sum() / area[t])
            cy = float((weight[t] * ys).sum() / area[t])
            result[t][colour] = (cx, cy, float(area[t]))
    return result


def clip_batch(seeds: list[int], spec: ClipSpec | None = None) -> tuple[Tensor, list[str]]:
    """Pixels ``(B, 3, T, H, W)`` and prompts of the clips of ``seeds``."""
    clips = [generate_clip(seed, spec) for seed in seeds]
    return torch.stack([c.pixels for c in clips]), [c.prompt for c in clips]
