"""The exact reward of the built-in shapes model: the GenEval-style checker's graded score.

A prompt's metadata comes from the caller (a prompt -> metadata mapping, e.g. from accel.shapes.prompt_set) or, by
default, from parsing the prompt with the shapes grammar (accel.shapes.prompts: GenEval's six templates).
"""

from __future__ import annotations

import re
from typing import Literal

import torch

from accel.rewards.base import check_pixels, to_uint8
from accel.shapes import COLORS, RELATIONS, SHAPES, check

_NUM = {"two": 2, "three": 3, "four": 4}
_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
_OBJ = rf"an? (?:({_COLOR}) )?({_SHAPE})"
_PATTERNS = [
    ("counting", re.compile(rf"a photo of ({'|'.join(_NUM)}) ({_SHAPE})s")),
    ("position", re.compile(rf"a photo of an? ({_SHAPE}) ({'|'.join(RELATIONS)}) an? ({_SHAPE})")),
    ("pair", re.compile(rf"a photo of {_OBJ} and {_OBJ}")),
    ("single", re.compile(rf"a photo of {_OBJ}")),
]
TEMPLATES = ("a photo of a circle", "a photo of a circle and a square", "a photo of three triangles",
             "a photo of a red square", "a photo of a circle left of a square",
             "a photo of a red circle and a blue triangle")


def parse_shapes_prompt(prompt: str) -> dict:
    """GenEval metadata of a shapes-grammar prompt (the inverse of accel.shapes.make_metadata).

    Raises:
        ValueError: the prompt is not in the grammar (the message shows the six templates).
    """
    text = " ".join(prompt.lower().split())
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            return _metadata(kind, m.groups(), prompt)
    raise ValueError(f"{prompt!r} is not a shapes-grammar prompt; the templates are: {'; '.join(TEMPLATES)}. "
                     "Pass metadata= for other prompts")


def _metadata(kind: str, g: tuple, prompt: str) -> dict:
    def obj(color, shape):
        return {"class": shape, "count": 1, **({"color": color} if color else {})}

    if kind == "counting":
        n, shape = _NUM[g[0]], g[1]
        return {"tag": "counting", "include": [{"class": shape, "count": n}],
                "exclude": [{"class": shape, "count": n + 1}], "prompt": prompt}
    if kind == "position":
        a, rel, b = g
        return {"tag": "position", "include": [{"class": b, "count": 1},
                                               {"class": a, "count": 1, "position": [rel, 0]}], "prompt": prompt}
    if kind == "pair":
        c1, a, c2, b = g
        if bool(c1) != bool(c2):
            raise ValueError(f"{prompt!r}: colour both objects or neither (GenEval's two_object / color_attr)")
        return {"tag": "color_attr" if c1 else "two_object", "include": [obj(c1, a), obj(c2, b)], "prompt": prompt}
    color, shape = g
    return {"tag": "colors" if color else "single_object", "include": [obj(color, shape)], "prompt": prompt}


class ShapesReward:
    """Graded exact score of the shapes checker: the fraction of the prompt's GenEval clauses an image satisfies.

    Args:
        strict: also require that no object beyond the prompted ones is present (the checker's strict rule; the
            default: a lenient score is maximised by clutter, a poor target for search).
        metadata: prompt -> GenEval metadata for prompts outside the grammar; others are parsed.

    score(samples, prompts): samples (B, 3, H, W) float in [0, 1] -> (B,) float32 in [0, 1], 1 = correct.
    """

    reads: Literal["pixels", "latents"] = "pixels"

    def __init__(self, strict: bool = True, metadata: dict[str, dict] | None = None):
        self.strict = strict
        self.metadata = dict(metadata or {})
        self._parsed: dict[str, dict] = {}

    def metadata_for(self, prompt: str) -> dict:
        if prompt in self.metadata:
            return self.metadata[prompt]
        if prompt not in self._parsed:
            self._parsed[prompt] = parse_shapes_prompt(prompt)
        return self._parsed[prompt]

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_pixels(samples, type(self).__name__)
        images = to_uint8(samples).numpy()
        scores = [check(img, self.metadata_for(p), strict=self.strict).score for img, p in zip(images, prompts)]
        return torch.tensor(scores, dtype=torch.float32)
