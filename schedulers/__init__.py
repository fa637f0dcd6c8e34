"""Time grids and stateless solver steps (sigma in [0, 1], 1 = noise; accel.core.flow)."""

from accel.schedulers.flow import SAMPLERS, euler_step, euler_update, get_step, heun_step, sample

__all__ = ["SAMPLERS", "euler_step", "euler_update", "get_step", "heun_step", "sample"]
