"""Time grids and stateless solver steps (sigma in [0, 1], 1 = noise; accel.core.flow)."""

if __name__ != "accel.schedulers":  # a bare `import schedulers` from the repository root: accel/_rootpath.py
    from accel._rootpath import load_installed

    load_installed(__name__)
else:
    from accel.schedulers.flow import SAMPLERS, euler_step, euler_update, get_step, heun_step, sample
    from accel.schedulers.sde import (FlowPrediction, Interpolant, LinearInterpolant, SDEConfig, VPInterpolant,
                                      diffusion_coefficient, make_interpolant, predict, rbf_time_grid, sample_sde,
                                      sde_step, sde_time_grid)

__all__ = ["SAMPLERS", "FlowPrediction", "Interpolant", "LinearInterpolant", "SDEConfig", "VPInterpolant",
           "diffusion_coefficient", "euler_step", "euler_update", "get_step", "heun_step", "make_interpolant",
           "predict", "rbf_time_grid", "sample", "sample_sde", "sde_step", "sde_time_grid"]
