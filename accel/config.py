"""Typed options shared by the API and the CLI, validated at the boundary."""

from __future__ import annotations

from dataclasses import dataclass


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class AccelConfig:
    """Options of `accelerate_pipeline`.

    sampler: the flow ODE step ("euler" reproduces diffusers' FlowMatchEulerDiscreteScheduler exactly; "heun" is
    second order and costs 2 NFE per step but the last; "fewstep" runs a distilled student's own few steps,
    accel.schedulers.fewstep).
    fused_kernels: route the transformer's modulated norms, gated residuals and q/k norm (+ rotary) through
    accel.kernels (Triton on CUDA, the pure-torch twins elsewhere). Off by default: on CUDA the fused ops agree
    with the unfused model within the dtype's tolerance, not bit for bit.
    """

    sampler: str = "euler"
    fused_kernels: bool = False

    def __post_init__(self):
        from accel.schedulers.flow import SAMPLERS

        check_choice("sampler", self.sampler, (*SAMPLERS, "fewstep"))
