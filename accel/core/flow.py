"""The one time convention of accel, and converters between parameterisations.

sigma in [0, 1], sigma = 1 is pure noise:  x_sigma = (1 - sigma) * x0 + sigma * eps.
The network predicts the velocity v = eps - x0 (rectified flow; as diffusers' FlowMatchEulerDiscreteScheduler,
Flux, SD3, Wan and LTX). `sigma` broadcasts against `x`: a scalar, per sample (B,), or any shape that broadcasts.
"""

from __future__ import annotations

import torch


def _b(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Make sigma broadcast against x: (B,) becomes (B, 1, ..., 1)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 1 and x.ndim > 1 and s.shape[0] == x.shape[0]:
        s = s.view(-1, *([1] * (x.ndim - 1)))
    return s


def interpolate(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps."""
    s = _b(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_to_x0(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x - sigma v."""
    return x - _b(sigma, x) * v


def velocity_to_eps(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """eps = x + (1 - sigma) v."""
    return x + (1 - _b(sigma, x)) * v


def velocity_to_score(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """Score of p_sigma(x): -eps / sigma (undefined at sigma = 0)."""
    return -velocity_to_eps(x, v, sigma) / _b(sigma, x)


def x0_eps_to_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = eps - x0."""
    return eps - x0


def x0_to_velocity(x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """Inverse of velocity_to_x0: v = (x - x0) / sigma."""
    return (x - x0) / _b(sigma, x)
