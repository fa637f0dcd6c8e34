"""Time grids and stateless solver steps (sigma in [0, 1], 1 = noise; accel.core.flow)."""

from accel.schedulers.flow import SAMPLERS, euler_step, euler_update, get_step, heun_step, sample
from accel.schedulers.sde import (FlowPrediction, Interpolant, LinearInterpolant, SDEConfig, VPInterpolant,
                                  diffusion_coefficient, make_interpolant, predict, rbf_time_grid, sample_sde,
                                  sde_step, sde_time_grid)

__all__ = ["SAMPLERS", "FlowPrediction", "Interpolant", "LinearInterpolant", "SDEConfig", "VPInterpolant",
           "diffusion_coefficient", "euler_step", "euler_update", "get_step", "heun_step", "make_interpolant",
           "predict", "rbf_time_grid", "sample", "sample_sde", "sde_step", "sde_time_grid"]
