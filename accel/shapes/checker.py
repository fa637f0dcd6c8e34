"""Exact GenEval-style checker for shapes-world images.

GenEval (Ghosh et al., 2023) scores an image against prompt metadata with an object detector and a colour
classifier. Here the world is known, so the detector is programmatic: pixels are classified by chromaticity into the
palette, each colour's connected components are objects, and each object's shape follows from its geometry
(triangles put most of their mass in the lower half of their box; squares fill their box; circles fill ~79%).
The rules are GenEval's (`evaluate` in its evaluation/evaluate_images.py), re-implemented:
- include {class, count}: at least `count` objects of that class;
- include with `color`: at least `count` of them have that colour;
- include with `position` [relation, i]: the matched objects stand in that relation to every object matched by
  clause i, with GenEval's margin (POSITION_THRESHOLD = 0.1 of the boxes' sizes);
- exclude {class, count}: fewer than `count` objects of that class (counting prompts exclude count + 1).
Deliberate deviation: GenEval takes the top-`count` detections by confidence and then checks their colour; with no
confidence here, a clause picks the objects that satisfy its colour. `strict=True` adds one rule GenEval lacks: no
object beyond the ones prompted (better as a search reward: a lenient rule is satisfied by extra clutter).
User docs (the grammar, these rules and the deviation): docs/builtin-models.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from accel.shapes.world import COLORS, PALETTE

POSITION_THRESHOLD = 0.1
# A pixel belongs to an object when its brightest channel exceeds this (the palette's are 230-240, so this is
# roughly "more than 40% covered") and it is saturated enough to have a hue.
_MIN_BRIGHTNESS = 100.0
_MIN_SOLIDITY = 0.7  # mean coverage of a component's pixels
_MAX_BACKGROUND = 70.0  # mean brightness of the other pixels around a component
_MIN_PARTIAL = 20.0  # dimmer pixels are background, also when soft coverage is measured
_MAX_GREYNESS = 0.6  # min channel / max channel above this is grey or white, not a palette colour
_MIN_AREA = 10 / 32**2  # components smaller than this fraction of the image are noise
_PALETTE_CHROMA = np.stack([np.asarray(c, np.float32) / max(c) for c in PALETTE.values()])  # (C, 3)


@dataclass(frozen=True)
class Detection:
    shape: str  # "circle" | "square" | "triangle" | "unknown"
    color: str
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels
    area: int


@dataclass(frozen=True)
class Clause:
    kind: str  # "include" | "exclude" | "extra"
    text: str
    passed: bool


@dataclass
class CheckResult:
    correct: bool
    clauses: list[Clause] = field(default_factory=list)
    count_error: int = 0  # sum over include clauses of |found - expected| (class only, colour ignored)

    @property
    def score(self) -> float:
        """Graded score in [0, 1]: the fraction of clauses satisfied (1.0 exactly when correct)."""
        if not self.clauses:
            return 1.0 if self.correct else 0.0
        return sum(c.passed for c in self.clauses) / len(self.clauses)


def _classify_shape(weight: np.ndarray) -> str:
    """Shape of one component from its soft coverage (h, w) in [0, 1] around its box.

    Soft coverage makes the cues independent of how the shape sits on the pixel grid, which matters for 8-pixel
    objects (a thresholded, pixelated circle fills ~90% of its box, like a square):
    - triangles (apex up) put about a quarter of their mass in the upper half of their extent;
    - mass / (longest column x longest row) is 1 for a square, pi/4 for a circle, 1/2 for a triangle (each
      column's sum is an exact chord length, whatever the sub-pixel offset).
    """
    cols, rows = weight.sum(axis=0), weight.sum(axis=1)
    mass = weight.sum()
    width, height = cols.max(), rows.max()  # longest row (a width) and column (a height), soft
    extent_w, extent_h = mass / height, mass / width
    if not 0.55 <= extent_w / extent_h <= 1.8:
        return "unknown"  # elongated: merged objects or a smear
    # Centre of mass height relative to the soft vertical extent: the triangle's sits low.
    ys = np.arange(weight.shape[0]) + 0.5
    lit = np.nonzero(rows > 0.05 * rows.max())[0]
    top, bottom = ys[lit[0]] - 0.5, ys[lit[-1]] + 0.5
    cy = (rows * ys).sum() / mass
    fill = mass / (width * height)
    low = (cy - top) / (bottom - top)
    if low > 0.56 or (low > 0.52 and fill < 0.64):
        return "triangle"
    if fill >= 0.89:
        return "square"
    if fill >= 0.68:
        return "circle"
    return "unknown"


def detect(image: np.ndarray) -> list[Detection]:
    """Find the objects in an image.

    Args:
        image: (H, W, 3) uint8, or float in [0, 1].
    Returns:
        One Detection per connected single-colour component of sufficient size.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    img = img.astype(np.float32) * (255.0 if img.dtype.kind == "f" else 1.0)
    bright = img.max(axis=-1)
    hued = img.min(axis=-1) < _MAX_GREYNESS * bright
    colored = (bright > _MIN_BRIGHTNESS) & hued
    chroma = img / np.maximum(bright, 1.0)[..., None]
    nearest = np.linalg.norm(chroma[..., None, :] - _PALETTE_CHROMA, axis=-1).argmin(axis=-1)  # (H, W)
    min_area = max(4, int(round(_MIN_AREA * img.shape[0] * img.shape[1])))
    full = [max(PALETTE[c]) for c in COLORS]
    found = []
    for ci, color in enumerate(COLORS):
        same = hued & (nearest == ci)
        labels, n = ndimage.label(colored & same)
        for sl, idx in zip(ndimage.find_objects(labels), range(1, n + 1)):
            area = int((labels[sl] == idx).sum())
            if area < min_area:
                continue
            # Soft coverage of this colour in the box grown by a pixel: partly covered edge pixels count partly.
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            weight = np.where(same[grown] & (bright[grown] > _MIN_PARTIAL), bright[grown] / full[ci], 0.0)
            weight = np.clip(weight, 0, 1)
            # Objects are solid and stand on a dark background; blobs of noise are neither.
            solid = weight[labels[grown] == idx].mean()
            around = bright[grown][weight == 0]
            if solid < _MIN_SOLIDITY or (around.size and around.mean() > _MAX_BACKGROUND):
                continue
            box = (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
            found.append(Detection(_classify_shape(weight), color, box, area))
    return found


def relative_position(a: tuple[float, ...], b: tuple[float, ...]) -> set[str]:
    """Relations of box a to box b, as GenEval computes them (a margin of 0.1 of the boxes' sizes)."""
    boxes = np.asarray([a, b], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _describe(req: dict) -> str:
    color = f"{req['color']} " if "color" in req else ""
    pos = f" {req['position'][0]} #{req['position'][1]}" if "position" in req else ""
    return f"{req['count']} {color}{req['class']}{pos}"


def check(image: np.ndarray, metadata: dict, strict: bool = False) -> CheckResult:
    """Score one image against GenEval-format metadata ({"include": [...], "exclude": [...]})."""
    return check_detections(detect(image), metadata, strict=strict)


def check_detections(dets: list[Detection], metadata: dict, strict: bool = False) -> CheckResult:
    result = CheckResult(correct=True)
    by_class: dict[str, list[Detection]] = {}
    for d in dets:
        by_class.setdefault(d.shape, []).append(d)
    matched: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        objs = by_class.get(req["class"], [])
        result.count_error += abs(len(objs) - req["count"])
        if "color" in req:
            objs = [o for o in objs if o.color == req["color"]]
        ok = len(objs) >= req["count"]
        if ok and "position" in req:
            rel, target = req["position"]
            targets = matched[target] if target < len(matched) else None
            # Keep the candidates that stand in the relation to every target object; GenEval requires it of the
            # `count` objects it picked, and we pick the ones that satisfy it.
            objs = [o for o in objs if targets and all(rel in relative_position(o.box, t.box) for t in targets)]
            ok = len(objs) >= req["count"]
        matched.append(objs[: req["count"]] if ok else None)
        result.clauses.append(Clause("include", _describe(req), ok))
    for req in metadata.get("exclude", []):
        ok = len(by_class.get(req["class"], [])) < req["count"]
        result.clauses.append(Clause("exclude", f"fewer than {req['count']} {req['class']}", ok))
    if strict:
        expected = sum(req["count"] for req in metadata.get("include", []))
        ok = len(dets) == expected
        result.clauses.append(Clause("extra", f"exactly {expected} objects (found {len(dets)})", ok))
    result.correct = all(c.passed for c in result.clauses)
    return result
