"""Elastic capacity at inference: how much of each MoE layer's trained capacity a denoiser call uses.

Expert-choice capacity is a dial that needs no retraining to turn: each expert takes ceil(f * c * S / E) tokens
instead of ceil(c * S / E), where c is the layer's trained capacity factor and f the factor chosen here. f < 1 saves
routed-expert FLOPs in proportion; f > 1 spends more (quality is to be measured, not assumed: Elastic MoE, Gu et
al. 2025, finds that experts not trained to co-activate degrade when more of them are used than in training).

A capacity option is one of:
- a number f > 0: the same factor on every MoE layer at every step;
- a list of numbers, one factor per MoE layer (in block order);
- a callable sigma -> f: a per-step schedule (sigma in [0, 1], 1 = noise), evaluated at each denoiser call;
- "auto": `decided_schedule`, full capacity while the sample's layout is being decided, less after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

CapacityOption = Union[float, int, Sequence[float], Callable[[float], float], str]
SCHEDULES = ("auto",)


def decided_schedule(sigma: float) -> float:
    """The "auto" schedule: factor 1 for sigma >= 0.5, then linearly down to 0.5 at sigma = 0, on the reasoning
    that a flow model settles the coarse layout at high noise and refines detail at low noise. A heuristic, not
    tuned on any model: compare schedules at equal expert FLOPs (`accel bench moe`) before relying on one."""
    return 1.0 if sigma >= 0.5 else 0.5 + sigma


def _factor(value, what: str) -> float:
    """A capacity factor: a finite real number > 0 (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0 (a factor on the trained capacity: 1 = as trained, "
                         f"0.5 = half the routed-expert FLOPs, 2 = twice), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CapacityPlan:
    """A validated capacity option for a model with `layers` MoE layers.

    Attributes:
        layers: number of MoE layers.
        constant: per-layer factors when they do not depend on sigma, else None.
        schedule: sigma -> factor when they do, else None.
        name: how the option reads in stats ("constant", "per-layer", "auto", "callable").
    """

    layers: int
    constant: tuple[float, ...] | None
    schedule: Callable[[float], float] | None
    name: str

    def factors(self, sigma: float | None) -> tuple[float, ...]:
        """Per-layer factors at sigma. Raises ValueError when a schedule returns anything but a finite number > 0,
        or when a schedule has no sigma to read."""
        if self.constant is not None:
            return self.constant
        if sigma is None:
            raise ValueError("a capacity schedule needs the denoiser's timestep (sigma) at each call")
        value = self.schedule(sigma)
        return (_factor(value, f"the capacity schedule's value at sigma={sigma:.4g}"),) * self.layers


def capacity_plan(option: CapacityOption, layers: int) -> CapacityPlan:
    """Validate a capacity option (see the module docstring) for a model with `layers` MoE layers.

    Raises:
        ValueError: for a model without MoE layers, a factor <= 0 or not a number, an unknown schedule name, or a
            list whose length is not the number of MoE layers.
    """
    if layers == 0:
        raise ValueError("capacity= applies to mixture-of-experts transformers; this model has no MoE layers "
                         "(it is dense)")
    if isinstance(option, str):
        if option not in SCHEDULES:
            raise ValueError(f"unknown capacity schedule {option!r}; allowed: a number > 0, a list of {layers} "
                             f"numbers (one per MoE layer), a callable of sigma, or {', '.join(map(repr, SCHEDULES))}")
        return CapacityPlan(layers, None, decided_schedule, option)
    if callable(option):
        return CapacityPlan(layers, None, option, "callable")
    if isinstance(option, (list, tuple)):
        if len(option) != layers:
            raise ValueError(f"a per-layer capacity list needs one factor per MoE layer ({layers}), got "
                             f"{len(option)}")
        return CapacityPlan(layers, tuple(_factor(f, "each per-layer capacity factor") for f in option), None,
                            "per-layer")
    return CapacityPlan(layers, (_factor(option, "capacity"),) * layers, None, "constant")
