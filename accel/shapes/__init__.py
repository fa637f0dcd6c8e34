"""The shapes world: renderer, GenEval-format prompt grammar and an exact checker (see each module)."""

from accel.shapes.checker import CheckResult, Clause, Detection, check, check_detections, detect, relative_position
from accel.shapes.prompts import RELATIONS, TAGS, make_metadata, prompt_set, random_metadata, scene_for
from accel.shapes.world import COLORS, PALETTE, SHAPES, ShapeObject, render

__all__ = [
    "COLORS", "PALETTE", "RELATIONS", "SHAPES", "TAGS", "CheckResult", "Clause", "Detection", "ShapeObject",
    "check", "check_detections", "detect", "make_metadata", "prompt_set", "random_metadata", "relative_position",
    "render", "scene_for",
]
