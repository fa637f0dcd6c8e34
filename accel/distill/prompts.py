"""Where a data-free distillation run gets its prompts: the shapes grammars, or a user's list / prompt file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class PromptSource:
    """Draws n prompts from a numpy Generator (whose state a checkpoint keeps). name: recorded in the checkpoint,
    so a resume with other prompts is refused."""

    name: str
    draw: Callable[[np.random.Generator, int], list[str]]

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        return self.draw(rng, n)


def shapes_image_prompts() -> PromptSource:
    """The built-in image model's grammar (accel.shapes.prompts: GenEval's six tags, uniformly)."""
    from accel.shapes.prompts import random_metadata

    return PromptSource("shapes-image", lambda rng, n: [random_metadata(rng)["prompt"] for _ in range(n)])


def shapes_video_prompts() -> PromptSource:
    """The built-in video model's grammar (accel.shapes.video)."""
    from accel.shapes.video import random_video_metadata

    return PromptSource("shapes-video", lambda rng, n: [random_video_metadata(rng)["prompt"] for _ in range(n)])


def list_prompts(prompts: list[str], name: str = "list") -> PromptSource:
    """Uniform draws (with replacement) from a fixed list."""
    prompts = [p.strip() for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("the prompt list is empty or has an empty prompt")
    return PromptSource(f"{name}:{len(prompts)}",
                        lambda rng, n: [prompts[int(i)] for i in rng.integers(len(prompts), size=n)])


def file_prompts(path: str | Path) -> PromptSource:
    """One prompt per non-empty line of a text file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} has no prompts")
    return list_prompts(lines, name=f"file {path.name}")


def default_prompts(pipe) -> PromptSource:
    """The built-in models' grammars; other pipelines need prompts from the user."""
    name = type(pipe).__name__
    if name == "ShapesPipeline":
        return shapes_image_prompts()
    if name == "ShapesVideoPipeline":
        return shapes_video_prompts()
    raise ValueError(f"{name} has no built-in prompt grammar: pass prompts (a list or a prompt file, one per line)")


def as_source(prompts, pipe) -> PromptSource:
    """None (the built-in grammar), a PromptSource, a list of prompts or a prompt file path."""
    if prompts is None:
        return default_prompts(pipe)
    if isinstance(prompts, PromptSource):
        return prompts
    if isinstance(prompts, (str, Path)):
        return file_prompts(prompts)
    if isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts):
        return list_prompts(list(prompts))
    raise ValueError(f"prompts must be None, a PromptSource, a list of strings or a file path, got "
                     f"{type(prompts).__name__}")
