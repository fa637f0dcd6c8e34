"""Shared helpers of the rewards: checked scoring and pixel conversions."""

from __future__ import annotations

import torch

from accel.core.reward import Reward, validate_scores

READS = ("pixels", "latents")


def evaluate(reward: Reward, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """reward.score with its output checked: (B,) float32, finite; raises ValueError naming the reward otherwise."""
    if len(prompts) != samples.shape[0]:
        raise ValueError(f"got {samples.shape[0]} samples for {len(prompts)} prompts")
    scores = reward.score(samples, prompts)
    return validate_scores(scores, samples.shape[0], name=type(reward).__name__).float()


def check_pixels(samples: torch.Tensor, name: str) -> None:
    """Pixel rewards take (B, 3, H, W) floats in [0, 1]."""
    if samples.ndim != 4 or samples.shape[1] != 3 or not samples.is_floating_point():
        raise ValueError(f"{name} reads pixels: a float (B, 3, H, W) tensor in [0, 1], got "
                         f"{tuple(samples.shape)} {samples.dtype}")


def to_uint8(samples: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded as PIL conversion of a diffusers output is."""
    return (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
