"""Shapes world: coloured circles, squares and triangles on a black background, rendered exactly.

The world exists so that text-to-image quality is *exactly* measurable on a CPU: every scene is drawn from a known
list of objects, and `accel.shapes.checker` reads them back with a programmatic detector. Geometry is expressed in
units of the image size, so the same scene renders at any resolution (the built-in model uses 32x32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated, well separated hues; the checker classifies pixels by chromaticity, so brightness may vary.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

# Object size, as a fraction of the image side: the radius of the shape's bounding circle.
RADIUS_RANGE = (3.6 / 32, 5.2 / 32)
# Minimum free space between two objects' bounding circles, as a fraction of the image side. Same-colour
# neighbours that touch merge into one blob for any detector (and for a small model), so keep them apart.
GAP = 2.5 / 32
BORDER = 1.0 / 32


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. Coordinates are fractions of the image side; y grows downwards."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the drawn shape, as fractions of the image side."""
        if self.shape == "circle":
            return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)
        if self.shape == "square":
            s = _SQUARE_HALF * self.r
            return (self.cx - s, self.cy - s, self.cx + s, self.cy + s)
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + _TRIANGLE_BASE * self.r)


# A square of half-side 0.85 r has about the area of the circle of radius r (2.89 r^2 vs 3.14 r^2); the upright
# triangle spans 2r wide and 1.75r tall. Similar areas keep "which shape" independent of "how big".
_SQUARE_HALF = 0.85
_TRIANGLE_BASE = 0.75


def _coverage(obj: ShapeObject, size: int, supersample: int) -> np.ndarray:
    """Fraction of each pixel covered by the object, (size, size) float32, by supersampling."""
    n = size * supersample
    centers = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = centers[None, :], centers[:, None]
    if obj.shape == "circle":
        inside = (x - obj.cx) ** 2 + (y - obj.cy) ** 2 <= obj.r**2
    elif obj.shape == "square":
        s = _SQUARE_HALF * obj.r
        inside = (np.abs(x - obj.cx) <= s) & (np.abs(y - obj.cy) <= s)
    elif obj.shape == "triangle":
        top, base = obj.cy - obj.r, obj.cy + _TRIANGLE_BASE * obj.r
        # Half-width grows linearly from 0 at the apex to r at the base.
        half = obj.r * (y - top) / (base - top)
        inside = (y >= top) & (y <= base) & (np.abs(x - obj.cx) <= half)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; allowed: {', '.join(SHAPES)}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3), dtype=np.float32)


def render(objects: tuple[ShapeObject, ...] | list[ShapeObject], size: int = 32, supersample: int = 4) -> np.ndarray:
    """Draw objects on black. Returns (size, size, 3) uint8, anti-aliased by supersampling."""
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    for obj in objects:
        if obj.color not in PALETTE:
            raise ValueError(f"unknown color {obj.color!r}; allowed: {', '.join(COLORS)}")
        cov = _coverage(obj, size, supersample)[..., None]
        canvas = canvas * (1 - cov) + cov * np.asarray(PALETTE[obj.color], dtype=np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _bounding_radius(obj_r: float, shape: str) -> float:
    # The triangle's apex sits at r above the centre and its corners at ~1.25 r: use a slightly larger circle.
    return obj_r * (1.25 if shape == "triangle" else 1.0 if shape == "circle" else _SQUARE_HALF * math.sqrt(2))


def fits(obj: ShapeObject, others: list[ShapeObject]) -> bool:
    """Whether obj lies inside the image and keeps GAP free space to every other object."""
    x0, y0, x1, y1 = obj.box()
    if x0 < BORDER or y0 < BORDER or x1 > 1 - BORDER or y1 > 1 - BORDER:
        return False
    rb = _bounding_radius(obj.r, obj.shape)
    for o in others:
        d = math.hypot(obj.cx - o.cx, obj.cy - o.cy)
        if d < rb + _bounding_radius(o.r, o.shape) + GAP:
            return False
    return True


def random_object(shape: str, color: str, rng: np.random.Generator) -> ShapeObject:
    r = float(rng.uniform(*RADIUS_RANGE))
    return ShapeObject(shape, color, float(rng.uniform(r, 1 - r)), float(rng.uniform(r, 1 - r)), r)
