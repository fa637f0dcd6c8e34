"""Flow ODE samplers over an explicit sigma grid, as stateless steps.

A step is `step(denoiser, x, sigma, sigma_next, cond) -> x_next`: it sees only the denoiser's guided velocity.
Arithmetic follows diffusers' FlowMatchEulerDiscreteScheduler exactly (the update in float32, the result cast back
to the velocity's dtype), so an Euler run reproduces a diffusers pipeline bit for bit.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from accel.core.denoiser import Cond, Denoiser
from accel.core.grid import TimeGrid


class Step(Protocol):
    def __call__(self, denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                 cond: Cond) -> torch.Tensor: ...


def euler_update(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x_next = x + (sigma_next - sigma) v, in float32; sigma may be 0-d, per sample or per token."""
    return (x.float() + (sigma_next - sigma) * v).to(v.dtype)


def euler_step(denoiser: Denoiser, x, sigma, sigma_next, cond: Cond) -> torch.Tensor:
    """First-order flow step: 1 velocity evaluation."""
    return euler_update(x, denoiser.velocity(x, sigma, cond), sigma, sigma_next)


def heun_step(denoiser: Denoiser, x, sigma, sigma_next, cond: Cond) -> torch.Tensor:
    """Second-order (trapezoidal) step: 2 evaluations, 1 on the last step to sigma = 0 (as EDM's Heun)."""
    v = denoiser.velocity(x, sigma, cond)
    x_euler = euler_update(x, v, sigma, sigma_next)
    if float(sigma_next) == 0.0:
        return x_euler
    v_next = denoiser.velocity(x_euler, sigma_next, cond)
    return euler_update(x, (v + v_next) / 2, sigma, sigma_next)


SAMPLERS: dict[str, Step] = {"euler": euler_step, "heun": heun_step}


def get_step(name: str) -> Step:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(denoiser: Denoiser, x: torch.Tensor, grid: TimeGrid, cond: Cond, step: Step = euler_step,
           callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from grid.sigmas[0] to 0. callback(i, x) runs after each step."""
    sigmas = grid.sigmas.to(x.device)
    for i in range(grid.num_steps):
        x = step(denoiser, x, sigmas[i], sigmas[i + 1], cond)
        if callback is not None:
            callback(i, x)
    return x
