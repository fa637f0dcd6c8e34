"""accel.moe: mixture-of-experts diffusion transformers with expert-choice routing.

- `apply_expert_choice(pipe.transformer)`: diffusers' Nucleus MoE layers through one grouped expert computation
  (same routing decisions, outputs within float reordering), reversible (accel.moe.engine);
- elastic capacity: a factor on each layer's trained capacity, constant, per layer or per step
  (accel.moe.capacity); `accelerate_pipeline(pipe)(..., capacity=0.5)` uses it for one call;
- the routing arithmetic itself (accel.moe.routing).
"""

from accel.moe.capacity import CapacityPlan, capacity_plan, decided_schedule
from accel.moe.engine import (
    ExpertChoiceConfig, ExpertChoiceHandle, ExpertStats, apply_expert_choice, check_capacity_factors,
    elastic_capacity, engine_of, moe_layers,
)
from accel.moe.routing import Routing, capacity_tokens, coactivation_choice, expert_choice, router_scores

__all__ = [
    "CapacityPlan", "ExpertChoiceConfig", "ExpertChoiceHandle", "ExpertStats", "Routing", "apply_expert_choice",
    "capacity_plan", "capacity_tokens", "check_capacity_factors", "coactivation_choice", "decided_schedule",
    "elastic_capacity", "engine_of", "expert_choice", "moe_layers", "router_scores",
]
