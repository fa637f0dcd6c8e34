"""Core contracts: the flow convention, time grids, the Denoiser and Reward protocols."""

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout
from accel.core.flow import (interpolate, velocity_to_eps, velocity_to_score, velocity_to_x0, x0_eps_to_velocity,
                             x0_to_velocity)
from accel.core.grid import TimeGrid
from accel.core.reward import Reward, validate_scores

__all__ = [
    "Cond", "Denoiser", "Prepared", "Reward", "TimeGrid", "TokenLayout", "interpolate", "validate_scores",
    "velocity_to_eps", "velocity_to_score", "velocity_to_x0", "x0_eps_to_velocity", "x0_to_velocity",
]
