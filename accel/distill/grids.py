"""Time grids of a distillation run and Salt's rules for choosing the SC timesteps.

Timesteps t are the papers' integers in [0, 1000] before the shift warp; sigma = warp(t / 1000)
(accel.schedulers.fewstep.shift_sigmas), so the student trains on exactly the grids it samples on.
"""

from __future__ import annotations

import random

import torch

from accel.schedulers.fewstep import TIMESTEPS, shift_sigmas


def to_sigma(t: int | float, shift: float) -> float:
    """A timestep in [0, 1000] -> the warped sigma in [0, 1] (float32 arithmetic, as fewstep_grid)."""
    return float(shift_sigmas(torch.tensor(float(t) / 1000, dtype=torch.float32), shift))


def sc_times(train_t: tuple[int, ...], boundaries: tuple[int, ...], exit_index: int,
             rng: random.Random) -> tuple[int, int] | None:
    """Salt's (t_e, t_m) for a rollout that exits at train_t[exit_index], or None at the grid's last step.

    t_e: one of the two largest inference boundaries (inference grid points and 0) strictly below the next
    training point, uniformly; t_m: a training point strictly between t_e and t_s, uniformly (t_e if none).
    """
    if not 0 <= exit_index < len(train_t):
        raise ValueError(f"exit_index must be in [0, {len(train_t)}), got {exit_index}")
    if exit_index == len(train_t) - 1:
        return None
    t_s, t_next = train_t[exit_index], train_t[exit_index + 1]
    below = sorted((b for b in set(boundaries) if b < t_next), reverse=True)[:2]
    if not below:
        raise ValueError(f"no inference boundary below {t_next}; the boundaries must include 0")
    t_e = below[rng.randrange(len(below))]
    middle = [t for t in train_t if t_e < t < t_s]
    t_m = middle[rng.randrange(len(middle))] if middle else t_e
    return t_e, t_m


def dmd_sigmas(batch: int, shift: float, t_min: float, t_max: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) float32 DMD / critic noise levels: t uniform over the integers [1000 t_min, 1000 t_max), warped by
    shift, then clamped to [t_min, t_max] (Self Forcing's rule)."""
    t = torch.randint(int(round(1000 * t_min)), int(round(1000 * t_max)), (batch,), generator=generator,
                      device=generator.device)
    return shift_sigmas(t.float().cpu() / 1000, shift).clamp(t_min, t_max)


def draw_step_count(choices: random.Random, steps: dict[int, float]) -> int:
    """A rollout's step count drawn from {step count: probability} (Salt's mixed-step rollouts)."""
    counts = sorted(steps)
    return choices.choices(counts, weights=[steps[k] for k in counts])[0]


def step_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The shift-warped sigmas of the `steps`-step inference list (without the final 0), float32."""
    return torch.tensor([to_sigma(t, shift) for t in TIMESTEPS[steps]], dtype=torch.float32)
