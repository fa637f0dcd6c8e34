"""Exact GenEval-style checker for shapes-world images.

GenEval (Ghosh et al., 2023) scores an image against prompt metadata with an object detector and a colour
classifier. Here the world is known, so the detector is programmatic: pixels are classified by chromaticity into the
palette, each colour's connected components are objects, and each object's shape follows from its geometry
(triangles put most of their mass in the lower half of their box; squares fill their box; circles fill ~79%).
The rules are GenEval's (`evaluate` in its evaluation/evaluate_images.py), written once here for every detector
(`check_detections`; accel.evals.geneval feeds it Mask2Former, OWLv2 or this module's detections):
- include {class, count}: at least `count` objects of that class;
- include with `color`: at least `count` of them have that colour;
- include with `position` [relation, i]: the matched objects stand in that relation to every object matched by
  clause i, with GenEval's margin (POSITION_THRESHOLD = 0.1 of the boxes' sizes);
- exclude {class, count}: fewer than `count` objects of that class (counting prompts exclude count + 1).
GenEval checks colour and position on the top-`count` detections by confidence only. Detections with scores are
ranked that way here too (the verdicts then equal GenEval's: docs/evals.md says how that was checked); this
module's detector has no confidence, so for its unscored detections a clause picks the objects that satisfy it
(a deliberate deviation). `strict=True` adds one rule GenEval lacks: no object beyond the ones prompted (better as a
search reward: a lenient rule is satisfied by extra clutter).
User docs (the grammar, these rules and the deviation): docs/builtin-models.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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


# GenEval's colour names, in the order its failure reasons list them.
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


@dataclass(frozen=True)
class Detection:
    """One detected object, from any detector.

    `label` is the class name the metadata uses ("circle", "dog"); `color` is None where the detector does not know
    it (the rules then ask a colour classifier); `score` is the detector's confidence, None for exact detectors;
    `mask` an optional (H, W) bool instance mask (GenEval classifies colour on the masked crop).
    """

    label: str
    color: str | None
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels
    area: int = 0
    score: float | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def shape(self) -> str:
        """The shapes world's name for the label: "circle" | "square" | "triangle" | "unknown"."""
        return self.label


# colors(detections, class name) -> one colour name per detection (GenEval classifies per class: its prompts name it)
ColorFn = Callable[[Sequence[Detection], str], list[str]]


@dataclass(frozen=True)
class Clause:
    kind: str  # "include" | "exclude" | "extra"
    text: str
    passed: bool
    reason: str = ""  # why it failed, in GenEval's wording ("expected dog>=2, found 1")


@dataclass
class CheckResult:
    correct: bool
    clauses: list[Clause] = field(default_factory=list)
    count_error: int = 0  # sum over include clauses of |found - expected| (class only, colour ignored)

    @property
    def reason(self) -> str:
        """GenEval's `reason` field: the failed clauses' reasons, one a line ("" when correct)."""
        return "\n".join(c.reason for c in self.clauses if not c.passed)

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


def _given_colors(dets: Sequence[Detection], classname: str) -> list[str]:
    if any(d.color is None for d in dets):
        raise ValueError(f"detections of {classname!r} carry no colour: pass colors= (a colour classifier)")
    return [d.color for d in dets]


def check_detections(dets: Sequence[Detection], metadata: dict, strict: bool = False,
                     colors: ColorFn | None = None) -> CheckResult:
    """GenEval's rules over one image's detections (see the module docstring).

    Args:
        dets: the image's detections. With scores, each class's are ranked by falling confidence (a stable sort:
            GenEval's own order survives) and a clause checks colour and position on its top `count` only, as
            GenEval does; without scores (exact detectors), a clause picks the objects that satisfy it.
        metadata: GenEval's format: {"include": [{class, count, [color], [position]}], ["exclude": [...]]}.
        strict: also require no objects beyond the prompted ones (not a GenEval rule).
        colors: colour classifier for detections whose colour is None (asked per clause, for the objects it
            checks, as GenEval classifies only those).
    """
    scored = {d.score is not None for d in dets}
    if len(scored) > 1:
        raise ValueError("detections must all have scores or none")
    ranked = scored == {True}
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(dets, key=lambda d: -d.score) if ranked else dets:
        by_class.setdefault(d.label, []).append(d)
    result = CheckResult(correct=True)
    matched: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        objs = by_class.get(req["class"], [])
        result.count_error += abs(len(objs) - req["count"])
        clause = _include(objs[: req["count"]] if ranked else objs, req, matched, colors or _given_colors)
        matched.append(clause[1])
        result.clauses.append(Clause("include", _describe(req), clause[1] is not None, clause[0]))
    for req in metadata.get("exclude", []):
        found = len(by_class.get(req["class"], []))
        reason = "" if found < req["count"] else f"expected {req['class']}<{req['count']}, found {found}"
        result.clauses.append(Clause("exclude", f"fewer than {req['count']} {req['class']}", not reason, reason))
    if strict:
        expected = sum(req["count"] for req in metadata.get("include", []))
        text = f"exactly {expected} objects (found {len(dets)})"
        ok = len(dets) == expected
        result.clauses.append(Clause("extra", text, ok, "" if ok else f"expected {text}"))
    result.correct = all(c.passed for c in result.clauses)
    return result


def _include(objs: list[Detection], req: dict, matched: list, colors: ColorFn) -> tuple[str, list | None]:
    """One include clause over its candidates (the top `count` when ranked, else all): (reason, the `count`
    objects matched) when it holds, (reason, None) when it fails. Reasons are GenEval's words."""
    name, count = req["class"], req["count"]
    if len(objs) < count:
        return f"expected {name}>={count}, found {len(objs)}", None
    if "color" in req:
        found = colors(objs, name)
        objs = [o for o, c in zip(objs, found) if c == req["color"]]
        if len(objs) < count:
            known = [c for c in GENEVAL_COLORS if c in found] + sorted(set(found) - set(GENEVAL_COLORS))
            return (f"expected {req['color']} {name}>={count}, found {found.count(req['color'])} {req['color']}; "
                    f"and " + ", ".join(f"{found.count(c)} {c}" for c in known)), None
    if "position" in req:
        rel, target = req["position"]
        targets = matched[target] if target < len(matched) else None
        if targets is None:
            return f"no target for {name} to be {rel}", None
        # GenEval requires the relation of the `count` objects it ranked first; unranked, keep those that hold it.
        keep, first_miss = [], None
        for o in objs:
            rels = [relative_position(o.box, t.box) for t in targets]
            if all(rel in r for r in rels):
                keep.append(o)
            elif first_miss is None:
                first_miss = next(r for r in rels if rel not in r)
        if len(keep) < count:
            return f"expected {name} {rel} target, found {' and '.join(sorted(first_miss))} target", None
        objs = keep
    return "", objs[:count]
