"""Prompt grammar of the shapes world, in GenEval's metadata format, and scenes that satisfy a prompt.

The six GenEval tags and their templates (GenEval's own wording, with shapes as the classes):
single_object "a photo of a circle"; two_object "a photo of a circle and a square"; counting "a photo of three
triangles" (include count n, exclude count n + 1); colors "a photo of a red square"; position "a photo of a circle
left of a square" (the second object is clause 0; GenEval's order); color_attr "a photo of a red circle and a blue
triangle".
The prompts the built-in model and the shapes reward accept, with examples: docs/builtin-models.md.
"""

from __future__ import annotations

import numpy as np

from accel.shapes.checker import relative_position
from accel.shapes.world import COLORS, SHAPES, ShapeObject, fits, random_object

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}


def _pick(rng: np.random.Generator, items, k: int = 1) -> list:
    idx = rng.choice(len(items), size=k, replace=False)
    return [items[i] for i in idx]


def make_metadata(tag: str, rng: np.random.Generator) -> dict:
    """One random prompt of the given tag, as a GenEval metadata dict (tag, include, [exclude], prompt)."""
    if tag == "single_object":
        (a,) = _pick(rng, SHAPES)
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of a {a}"}
    if tag == "two_object":
        a, b = _pick(rng, SHAPES, 2)
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of a {a} and a {b}"}
    if tag == "counting":
        (a,) = _pick(rng, SHAPES)
        n = int(rng.integers(2, 5))
        return {"tag": tag, "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
                "prompt": f"a photo of {NUMBERS[n]} {a}s"}
    if tag == "colors":
        (a,), (c,) = _pick(rng, SHAPES), _pick(rng, COLORS)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c}], "prompt": f"a photo of a {c} {a}"}
    if tag == "position":
        a, b = _pick(rng, SHAPES, 2)
        (rel,) = _pick(rng, RELATIONS)
        return {"tag": tag, "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of a {a} {rel} a {b}"}
    if tag == "color_attr":
        a, b = _pick(rng, SHAPES, 2)
        c1, c2 = _pick(rng, COLORS, 2)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
                "prompt": f"a photo of a {c1} {a} and a {c2} {b}"}
    raise ValueError(f"unknown tag {tag!r}; allowed: {', '.join(TAGS)}")


def prompt_set(n: int, seed: int = 0) -> list[dict]:
    """A fixed, seeded set of n prompts, the six tags in turn (so every tag gets n // 6 or n // 6 + 1)."""
    if n < 1:
        raise ValueError(f"the number of prompts must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [make_metadata(TAGS[i % len(TAGS)], rng) for i in range(n)]


def scene_for(metadata: dict, rng: np.random.Generator, max_tries: int = 200) -> list[ShapeObject]:
    """Objects that satisfy the metadata exactly: the prompted objects, nothing else.

    Relations are drawn unambiguous (the prompted relation and no other, by GenEval's own rule), so that a model
    trained on these scenes sees each word mean one thing.
    """
    for _ in range(max_tries):
        placed: list[ShapeObject] = []
        groups: list[list[ShapeObject]] = []
        ok = True
        for req in metadata["include"]:
            group = []
            for _ in range(req["count"]):
                color = req.get("color") or COLORS[int(rng.integers(len(COLORS)))]
                obj = _place(req, color, groups, placed, rng)
                if obj is None:
                    ok = False
                    break
                placed.append(obj)
                group.append(obj)
            if not ok:
                break
            groups.append(group)
        if ok:
            return placed
    raise RuntimeError(f"could not place a scene for {metadata['prompt']!r} in {max_tries} tries")


def _place(req: dict, color: str, groups, placed, rng: np.random.Generator, tries: int = 100) -> ShapeObject | None:
    for _ in range(tries):
        obj = random_object(req["class"], color, rng)
        if not fits(obj, placed):
            continue
        if "position" in req:
            rel, target = req["position"]
            if any(relative_position(obj.box(), t.box()) != {rel} for t in groups[target]):
                continue
        return obj
    return None


def random_metadata(rng: np.random.Generator) -> dict:
    """A prompt of a uniformly random tag (the training distribution)."""
    return make_metadata(TAGS[int(rng.integers(len(TAGS)))], rng)
