"""Helpers for tests of models built tiny from configs (accel's own tests, and users' tests of their adapters)."""

from __future__ import annotations

import torch


def jitter_(module: torch.nn.Module, seed: int | None = None, scale: float = 0.05) -> torch.nn.Module:
    """Add scale * N(0, 1) to every parameter of `module` in place, drawn from torch's global generator (seeded with
    `seed` first when given). An untrained DiT's zero-initialised output layers (adaLN-Zero) make every prediction
    the same; jittered, what a test compares can differ."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module
