"""The Reward contract: higher is better, one score per sample, batched."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    """score(samples, prompts) -> (B,) float tensor, higher is better.

    `reads` says what `samples` are: "pixels" = (B, 3, H, W) float in [0, 1] (video: (B, F, 3, H, W));
    "latents" = the denoiser's latents as the sampler holds them.
    """

    reads: Literal["pixels", "latents"]

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


def validate_scores(scores: torch.Tensor, batch: int, name: str = "reward") -> torch.Tensor:
    """Check a reward's output: shape (batch,), finite. Raises ValueError otherwise."""
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} must return a tensor of shape ({batch},), got {shape}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} returned a non-finite score (NaN or inf)")
    return scores
