"""Backward simulation (DMD2 / Self Forcing): the student's own few-step rollout produces its training inputs.

From noise, the student runs over its training grid without gradient up to a random exit index e, then one step
with gradient at sigma_e; the generator's sample is that step's x0 prediction. Between grid points it moves as
accel.schedulers.fewstep samples (the same float32 arithmetic, fresh noise from the run's generator for "renoise").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.core.denoiser import Cond, Denoiser
from accel.schedulers.fewstep import fewstep_update


@dataclass
class Exit:
    """The rollout at its exit step: input x_s at sigma_s (no gradient), the student's velocity v there (with
    gradient when asked) and its x0 = x_s - sigma_s v (the generator's sample)."""

    x_s: torch.Tensor
    sigma_s: float
    v: torch.Tensor
    x0: torch.Tensor


def noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of x's shape, drawn in float32 on the generator's device (so a seed gives the same
    noise on any device), in x's dtype and device."""
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=generator.device)
    return eps.to(x.device, x.dtype)


def student_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, rule: str,
                 generator: torch.Generator) -> torch.Tensor:
    """One move between grid points: the sampler's own update (accel.schedulers.fewstep.fewstep_update)."""
    return fewstep_update(x, v, sigma, sigma_next, rule, generator)


def rollout(student: Denoiser, x: torch.Tensor, cond: Cond, sigmas: torch.Tensor, exit_index: int, rule: str,
            generator: torch.Generator, grad: bool) -> Exit:
    """Run the student from noise x (at sigmas[0]) to sigmas[exit_index] without gradient, then evaluate it there
    (with gradient if grad). sigmas: the training grid, float32, decreasing, without the final 0."""
    if not 0 <= exit_index < sigmas.numel():
        raise ValueError(f"exit_index must be in [0, {sigmas.numel()}), got {exit_index}")
    with torch.no_grad():
        for i in range(exit_index):
            v = student.velocity(x, sigmas[i], cond)
            x = student_step(x, v, sigmas[i], sigmas[i + 1], rule, generator)
    sigma = sigmas[exit_index]
    with torch.set_grad_enabled(grad):
        v = student.velocity(x, sigma, cond)
        x0 = (x.float() - sigma * v.float()).to(x.dtype)
    return Exit(x_s=x, sigma_s=float(sigma), v=v, x0=x0)
