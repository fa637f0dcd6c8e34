"""Moving shapes: the video world of the built-in text-to-video model, its prompts and an exact checker.

A clip is FRAMES frames of the shapes world (accel.shapes.world): one or two objects on a black, static background,
each moving in a straight line in its prompted direction at SPEED image sides per frame ("a red circle moving
left", "a red circle moving left and a blue square moving up"). Most of every frame is static background, which is
what heterogeneous step allocation (accel.schedulers.hsa) bets on.

The checker reads each clip back exactly (accel.shapes.checker.detect on every frame):
- frames: in every frame, each prompted object (shape and colour) is detected (the image checker's rule per frame);
- persistence: each prompted object is found in every frame (tracked by nearest centre);
- direction: its centre moves in the prompted direction by at least half the prompted distance, and less than that
  across it.
A clip is correct when every clause holds; `strict=True` also forbids objects beyond the prompted ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from accel.shapes.checker import detect
from accel.shapes.world import COLORS, SHAPES, ShapeObject, fits, random_object, render

FRAMES = 8
SPEED = 1.25 / 32  # image sides per frame: 8.75 pixels over 8 frames at 32x32
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VIDEO_TAGS: tuple[str, ...] = ("one", "two")


def video_prompt(objects: list[dict]) -> str:
    return " and ".join(f"a {o['color']} {o['class']} moving {o['direction']}" for o in objects)


def make_video_metadata(tag: str, rng: np.random.Generator) -> dict:
    """Metadata of one prompt: {"tag", "prompt", "objects": [{"class", "color", "direction"}, ...]}."""
    if tag not in VIDEO_TAGS:
        raise ValueError(f"unknown video tag {tag!r}; allowed: {', '.join(VIDEO_TAGS)}")
    n = 1 if tag == "one" else 2
    colors = rng.choice(len(COLORS), size=n, replace=False)
    objects = [{"class": SHAPES[int(rng.integers(len(SHAPES)))], "color": COLORS[int(c)],
                "direction": list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]} for c in colors]
    return {"tag": tag, "prompt": video_prompt(objects), "objects": objects}


def video_prompt_set(n: int, seed: int = 0) -> list[dict]:
    """n prompts, the tags in turn, drawn with a seed."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [make_video_metadata(VIDEO_TAGS[i % len(VIDEO_TAGS)], rng) for i in range(n)]


def random_video_metadata(rng: np.random.Generator) -> dict:
    return make_video_metadata(VIDEO_TAGS[int(rng.integers(len(VIDEO_TAGS)))], rng)


def trajectory(obj: ShapeObject, direction: str, frames: int = FRAMES) -> list[ShapeObject]:
    dx, dy = DIRECTIONS[direction]
    return [ShapeObject(obj.shape, obj.color, obj.cx + dx * SPEED * f, obj.cy + dy * SPEED * f, obj.r)
            for f in range(frames)]


def video_scene_for(metadata: dict, rng: np.random.Generator, frames: int = FRAMES,
                    max_tries: int = 500) -> list[list[ShapeObject]]:
    """Per object, its positions in every frame: inside the image and apart from the others in every frame."""
    for _ in range(max_tries):
        paths: list[list[ShapeObject]] = []
        for req in metadata["objects"]:
            path = trajectory(random_object(req["class"], req["color"], rng), req["direction"], frames)
            others = [[p[f] for p in paths] for f in range(frames)]
            if all(fits(path[f], others[f]) for f in range(frames)):
                paths.append(path)
            else:
                break
        if len(paths) == len(metadata["objects"]):
            return paths
    raise RuntimeError(f"no layout found for {metadata['prompt']!r}")


def render_video(paths: list[list[ShapeObject]], size: int = 32) -> np.ndarray:
    """(F, size, size, 3) uint8 frames of the objects' paths."""
    frames = len(paths[0])
    return np.stack([render([p[f] for p in paths], size) for f in range(frames)])


@dataclass
class VideoCheckResult:
    correct: bool
    clauses: list[tuple[str, bool]] = field(default_factory=list)
    frame_accuracy: float = 0.0  # fraction of frames where every prompted object is detected

    @property
    def persistent(self) -> bool:
        """The persistence clauses: every prompted object is found in every frame."""
        return all(ok for name, ok in self.clauses if name.endswith(" in every frame"))

    @property
    def moving(self) -> bool:
        """The direction clauses: every prompted object moves its prompted way."""
        return all(ok for name, ok in self.clauses if " moves " in name)


def _centre(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def check_video(frames: np.ndarray, metadata: dict, strict: bool = False) -> VideoCheckResult:
    """Score one clip (F, H, W, 3) (uint8, or float in [0, 1]) against its metadata; see the module docstring."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (F, H, W, 3) frames, got shape {frames.shape}")
    detections = [detect(f) for f in frames]
    size = frames.shape[2]
    clauses: list[tuple[str, bool]] = []
    per_frame = np.ones(len(frames), bool)
    for req in metadata["objects"]:
        name = f"{req['color']} {req['class']}"
        track, previous = [], None
        for f, dets in enumerate(detections):
            found = [d for d in dets if d.shape == req["class"] and d.color == req["color"]]
            per_frame[f] &= bool(found)
            if not found:
                track.append(None)
                continue
            if previous is not None:
                found.sort(key=lambda d: np.hypot(*np.subtract(_centre(d.box), previous)))
            previous = _centre(found[0].box)
            track.append(previous)
        present = all(t is not None for t in track)
        clauses.append((f"{name} in every frame", present))
        moved = False
        if present:
            dx, dy = DIRECTIONS[req["direction"]]
            shift = np.subtract(track[-1], track[0])
            along = shift[0] * dx + shift[1] * dy
            across = abs(shift[0] * dy) + abs(shift[1] * dx)
            distance = SPEED * (len(frames) - 1) * size
            moved = along >= 0.5 * distance and across < 0.5 * distance
        clauses.append((f"{name} moves {req['direction']}", moved))
    if strict:
        expected = len(metadata["objects"])
        clauses.append((f"exactly {expected} objects per frame", all(len(d) == expected for d in detections)))
    return VideoCheckResult(all(ok for _, ok in clauses), clauses, float(per_frame.mean()))
