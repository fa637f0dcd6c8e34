"""TimeGrid: an explicit, decreasing sequence of sigmas from the start level to 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimeGrid:
    """sigmas: 1-D float32 tensor, strictly decreasing, last entry 0 (N steps = N + 1 entries)."""

    sigmas: torch.Tensor

    def __post_init__(self):
        s = self.sigmas
        if s.ndim != 1 or s.numel() < 2:
            raise ValueError(f"a time grid needs a 1-D tensor of at least 2 sigmas, got shape {tuple(s.shape)}")
        if not torch.all(s[:-1] > s[1:]):
            raise ValueError("sigmas must be strictly decreasing")
        if float(s[0]) > 1.0 + 1e-6 or float(s[-1]) < 0.0:
            raise ValueError(f"sigmas must lie in [0, 1], got [{float(s[-1])}, {float(s[0])}]")

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    def steps(self):
        """(sigma, sigma_next) pairs as 0-d tensors."""
        return zip(self.sigmas[:-1], self.sigmas[1:])

    @classmethod
    def linear(cls, num_steps: int, start: float = 1.0) -> TimeGrid:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return cls(torch.linspace(start, 0.0, num_steps + 1, dtype=torch.float32))

    @classmethod
    def shifted(cls, num_steps: int, shift: float) -> TimeGrid:
        """SD3's time shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
        s = cls.linear(num_steps).sigmas
        return cls(shift * s / (1 + (shift - 1) * s))
