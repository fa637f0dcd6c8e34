"""An interface for a VLM judge the user has (Gemini, GPT-4o, a local Qwen-VL, ...): a protocol and an adapter."""

from __future__ import annotations

from typing import Literal, Protocol, Sequence

import torch

from accel.rewards.base import check_pixels, to_uint8


class Judge(Protocol):
    """judge(images, prompts) -> one score per image. images: PIL RGB images; higher is better."""

    def __call__(self, images: list, prompts: list[str]) -> Sequence[float]: ...


class JudgeReward:
    """A reward from a user's judge callable, scores mapped from [low, high] to [0, 1] (not clipped).

    The judge is called once per batch (batch it yourself if your service takes one image at a time). A judge that
    returns the wrong number of scores, or a non-number, raises ValueError.
    """

    reads: Literal["pixels", "latents"] = "pixels"

    def __init__(self, judge: Judge, low: float = 0.0, high: float = 1.0):
        if not callable(judge):
            raise ValueError("judge must be callable: judge(images, prompts) -> scores")
        if not high > low:
            raise ValueError(f"need high > low, got low={low}, high={high}")
        self.judge, self.low, self.high = judge, low, high

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        check_pixels(samples, type(self).__name__)
        images = [Image.fromarray(a) for a in to_uint8(samples).numpy()]
        raw = self.judge(images, list(prompts))
        try:
            scores = torch.as_tensor([float(s) for s in raw], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ValueError(f"the judge must return numbers, got {raw!r}") from None
        return (scores - self.low) / (self.high - self.low)
