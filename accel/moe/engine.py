"""`apply_expert_choice(model) -> handle`: diffusers' Nucleus MoE layers through one grouped expert computation.

Per MoE layer the replacement forward computes the router scores, each expert's top-C tokens and their weights with
diffusers' own ops (accel.moe.routing, so the decisions are bit for bit upstream's), gathers the tokens into
expert-contiguous (E, B * C, D) order, runs all routed experts in one grouped SwiGLU (accel.kernels.moe: Triton on
CUDA, two batched matmuls elsewhere) with the routing weight applied per row, and adds the rows into the shared
expert's output. diffusers runs the experts as a Python loop (or `F.grouped_mm` where its config asks for it).

The hook also carries elastic capacity (accel.moe.capacity): a factor on each layer's trained capacity, constant or
a schedule read from the transformer's timestep at every call, and counts the expert work spent (`handle.stats`).

Hooks replace `forward` on the layer instances and add one forward pre-hook on the transformer; nothing on a class
changes, and `handle.remove()` restores the model exactly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from accel.kernels.fused import replace_forward
from accel.kernels.moe import grouped_swiglu, grouped_swiglu_reference
from accel.moe.capacity import CapacityOption, CapacityPlan, capacity_plan
from accel.moe.routing import capacity_tokens, coactivation_choice, expert_choice, router_scores

ENGINE_ATTR = "_accel_expert_choice"  # the handle, on the transformer it is applied to


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """The model's expert-choice MoE layers (diffusers' NucleusMoELayer), in block order."""
    from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoELayer

    return [m for m in model.modules() if isinstance(m, NucleusMoELayer)]


def check_capacity_factors(model: nn.Module) -> None:
    """A Nucleus checkpoint's per-layer capacity factors: a number, or a list with one entry per block, and every
    MoE block's factor a finite number > 0. diffusers indexes the list by block and silently ignores extra
    entries (and a factor of 0 still gives each expert one token), so a wrong list would pass unnoticed."""
    config = getattr(model, "config", None)
    factors = getattr(config, "capacity_factors", None)
    num_layers = getattr(config, "num_layers", None)
    if isinstance(factors, (list, tuple)) and num_layers is not None and len(factors) != num_layers:
        raise ValueError(f"capacity_factors must be a number or a list with one factor per block (num_layers = "
                         f"{num_layers}; dense blocks' entries are ignored), got a list of {len(factors)}")
    for i, layer in enumerate(moe_layers(model)):
        c = layer.capacity_factor
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"MoE layer {i} has capacity factor {c!r}; every MoE layer needs a finite factor > 0")


@dataclass
class ExpertStats:
    """Expert work spent since the last reset, in token rows (every routed and shared expert of a Nucleus model
    has the same width, so rows are proportional to FLOPs).

    Attributes:
        routed_rows: token-expert pairs the routed experts processed.
        trained_rows: what the trained capacities would have processed on the same calls.
        shared_rows: tokens through the shared experts (capacity does not change them).
        dropped_rows: tokens that no routed expert took (a 0-d tensor, summed on the device without a sync).
    """

    routed_rows: int = 0
    trained_rows: int = 0
    shared_rows: int = 0
    dropped_rows: torch.Tensor | int = 0
    by_sigma: dict[float, list] = field(default_factory=dict)  # sigma -> [dropped rows, token rows] at that sigma

    @property
    def dropped_token_fraction(self) -> float:
        """Fraction of token visits that reached the shared expert only (expert choice leaves the experts' load
        balanced by construction; the imbalance shows up as tokens no routed expert chose)."""
        return float(self.dropped_rows) / self.shared_rows if self.shared_rows else 0.0

    def dropped_by_sigma(self) -> dict[float, float]:
        """dropped_token_fraction per sigma (rounded to 1e-4), for calls whose samples shared one sigma: how the
        routing's coverage of the tokens changes along the trajectory."""
        return {s: float(d) / n for s, (d, n) in sorted(self.by_sigma.items(), reverse=True)}

    @property
    def routed_experts_per_token(self) -> float:
        """Routed experts that processed a token, on average over the tokens of every MoE layer call (the trained
        capacity factor, up to rounding, at factor 1)."""
        return self.routed_rows / self.shared_rows if self.shared_rows else 0.0

    @property
    def routed_flops_fraction(self) -> float:
        """Routed-expert FLOPs as a fraction of the trained capacities' (1.0 before any call)."""
        return self.routed_rows / self.trained_rows if self.trained_rows else 1.0

    @property
    def expert_flops_fraction(self) -> float:
        """Routed + shared expert FLOPs of the MoE layers, as a fraction of the same at trained capacity."""
        total = self.trained_rows + self.shared_rows
        return (self.routed_rows + self.shared_rows) / total if total else 1.0


@dataclass(frozen=True)
class ExpertChoiceConfig:
    """Options of `apply_expert_choice`.

    Attributes:
        capacity: a factor on every MoE layer's trained capacity (1.0: as trained), a list with one factor per MoE
            layer, a callable sigma -> factor, or "auto" (accel.moe.capacity).
        grouped: run the routed experts as one grouped SwiGLU (accel.kernels.moe). False keeps diffusers' own
            expert module (its loop) and changes only routing capacity: for measuring the engine against it.
        coactivation: candidate pool, as a multiple of the capacity, from which each expert draws its tokens at
            random while its layer is in training mode (accel.moe.routing.coactivation_choice); 1.0: plain top-C.
            Layers in eval mode always take their top-C.
    """

    capacity: CapacityOption = 1.0
    grouped: bool = True
    coactivation: float = 1.0

    def __post_init__(self):
        c = self.coactivation
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1:
            raise ValueError(f"coactivation must be a finite number >= 1 (1: plain top-C routing), got {c!r}")


@dataclass
class ExpertChoiceHandle:
    """What apply_expert_choice installed; `remove()` restores the model exactly (idempotent).

    Attributes:
        layers: the hooked MoE layers, in block order.
        plan: the validated capacity option in effect.
        factors: the per-layer capacity factors of the current (or last) transformer call.
        stats: expert work spent since the last `reset_stats()`.
    """

    model: nn.Module
    layers: list[nn.Module]
    plan: CapacityPlan
    grouped: bool = True
    coactivation: float = 1.0
    factors: tuple[float, ...] = ()
    sigma: float | None = None  # the current call's sigma, when its samples share one
    stats: ExpertStats = field(default_factory=ExpertStats)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # Where `timestep` sits among the model's positional forward arguments (the built-in shapes adapter passes it
    # positionally), or None.
    _timestep_position: int | None = field(default=None, repr=False)

    def set_capacity(self, option: CapacityOption) -> None:
        """Switch the capacity option (validated as in ExpertChoiceConfig)."""
        self.plan = capacity_plan(option, len(self.layers))
        self.factors = self.plan.constant or ()

    def reset_stats(self) -> None:
        self.stats = ExpertStats()

    def summary(self) -> dict:
        """The capacity option and the expert FLOPs it spent, for a wrapper's `.stats.extra`."""
        constant = self.plan.constant
        capacity = constant[0] if constant is not None and len(set(constant)) == 1 else self.plan.name
        return {"capacity": capacity, "expert_flops_fraction": self.stats.expert_flops_fraction,
                "routed_flops_fraction": self.stats.routed_flops_fraction,
                "routed_experts_per_token": self.stats.routed_experts_per_token,
                "dropped_token_fraction": self.stats.dropped_token_fraction,
                "dropped_by_sigma": self.stats.dropped_by_sigma()}

    def remove(self) -> None:
        """Undo every replacement, last first."""
        while self._undo:
            self._undo.pop()()

    def _before_forward(self, module, args, kwargs) -> None:
        """Forward pre-hook on the transformer: this call's sigma and per-layer factors, from its timestep, which
        is sigma for the models this engine serves (Nucleus takes t / num_train_timesteps, the shapes models
        sigma)."""
        timestep = kwargs.get("timestep")
        if timestep is None and self._timestep_position is not None and len(args) > self._timestep_position:
            timestep = args[self._timestep_position]
        t = None if timestep is None else torch.as_tensor(timestep).flatten().float()
        shared = t is not None and (t.numel() == 1 or bool((t == t[0]).all()))
        self.sigma = round(float(t[0]), 4) if shared else None
        if self.plan.constant is not None:
            self.factors = self.plan.constant
            return
        if t is None:
            raise ValueError("a capacity schedule reads sigma from the transformer's `timestep` argument; this call "
                             "has none")
        if not shared:
            raise ValueError("a capacity schedule takes one sigma per transformer call; this call has per-sample "
                             "sigmas (use a constant capacity with per-sample sigmas)")
        self.factors = self.plan.factors(float(t[0]))


def _expert_choice_forward(layer: nn.Module, hidden_states: torch.Tensor, hidden_states_unmodulated: torch.Tensor,
                           timestep: torch.Tensor | None = None, *, handle: ExpertChoiceHandle,
                           index: int) -> torch.Tensor:
    """NucleusMoELayer.forward through expert-choice routing at the handle's capacity and one grouped SwiGLU.

    hidden_states: (B, S, D), the experts' (modulated) input; hidden_states_unmodulated: (B, S, D), LN(h), which
    the router reads next to timestep (B, D), the timestep embedding. Returns (B, S, D).
    """
    bs, slen, dim = hidden_states.shape
    num_experts = layer.num_experts
    scores = router_scores(layer, hidden_states_unmodulated, timestep)  # (B, S, E)
    capacity = capacity_tokens(layer.capacity_factor * handle.factors[index], slen, num_experts)
    if layer.training and handle.coactivation > 1:
        routing = coactivation_choice(scores, capacity, layer.route_scale, handle.coactivation)
    else:
        routing = expert_choice(scores, capacity, layer.route_scale)
    x = hidden_states.reshape(bs * slen, dim).index_select(0, routing.tokens)  # (E * B * C, D), expert-contiguous
    if handle.grouped:
        experts = layer.experts
        # The Triton kernels are forward only; training (autograd on) takes the batched-matmul twin.
        swiglu = grouped_swiglu_reference if torch.is_grad_enabled() else grouped_swiglu
        routed = swiglu(x.view(num_experts, bs * capacity, dim), experts.gate_up_proj, experts.down_proj,
                        routing.weights).view(-1, dim)
    else:
        counts = torch.full((num_experts,), bs * capacity, device=x.device, dtype=torch.long)
        routed = (layer.experts(x, counts).float() * routing.weights.unsqueeze(-1)).to(hidden_states.dtype)
    out = layer.shared_expert(hidden_states).reshape(bs * slen, dim)
    out.index_add_(0, routing.tokens, routed)
    trained = capacity_tokens(layer.capacity_factor, slen, num_experts)
    handle.stats.routed_rows += num_experts * bs * capacity
    handle.stats.trained_rows += num_experts * bs * trained
    handle.stats.shared_rows += bs * slen
    covered = torch.zeros(bs * slen, dtype=torch.bool, device=x.device).index_fill_(0, routing.tokens, True)
    dropped = (~covered).sum()
    handle.stats.dropped_rows = handle.stats.dropped_rows + dropped
    if handle.sigma is not None:
        entry = handle.stats.by_sigma.setdefault(handle.sigma, [0, 0])
        entry[0], entry[1] = entry[0] + dropped, entry[1] + bs * slen
    return out.view(bs, slen, dim)


def engine_of(model: nn.Module) -> ExpertChoiceHandle | None:
    """The handle of the expert-choice engine applied to this model, or None."""
    return model.__dict__.get(ENGINE_ATTR)


def apply_expert_choice(model: nn.Module, config: ExpertChoiceConfig | None = None) -> ExpertChoiceHandle:
    """Route a Nucleus MoE transformer's expert layers through the expert-choice engine.

    Args:
        model: a NucleusMoEImageTransformer2DModel with MoE layers (pipe.transformer).
        config: capacity option and whether to group the experts; ExpertChoiceConfig() keeps the trained
            capacities, so the outputs equal diffusers' within float reordering (routing bit for bit).

    Returns:
        An ExpertChoiceHandle; `handle.remove()` restores the model exactly.

    Raises:
        ValueError: for a model without MoE layers, a bad capacity option or checkpoint capacity list, or a model
            that already has the engine applied.
    """
    config = config or ExpertChoiceConfig()
    if not isinstance(config, ExpertChoiceConfig):
        raise ValueError(f"config must be an ExpertChoiceConfig, got {type(config).__name__}")
    if engine_of(model) is not None:
        raise ValueError("the expert-choice engine is already applied to this model; remove the first handle "
                         "before applying again")
    layers = moe_layers(model)
    if not layers:
        hint = " (pass pipe.transformer, not the pipeline)" if hasattr(model, "transformer") else ""
        raise ValueError(f"the expert-choice engine applies to mixture-of-experts transformers (diffusers' "
                         f"NucleusMoEImageTransformer2DModel with MoE blocks); {type(model).__name__} has no MoE "
                         f"layers{hint}")
    check_capacity_factors(model)
    plan = capacity_plan(config.capacity, len(layers))
    handle = ExpertChoiceHandle(model=model, layers=layers, plan=plan, grouped=config.grouped,
                                coactivation=config.coactivation, factors=plan.constant or ())
    for index, layer in enumerate(layers):
        handle._undo.append(replace_forward(layer, functools.partial(_expert_choice_forward, handle=handle,
                                                                       index=index), mark=None))
    names = list(inspect.signature(model.forward).parameters)
    handle._timestep_position = names.index("timestep") if "timestep" in names else None
    hook = model.register_forward_pre_hook(handle._before_forward, with_kwargs=True)
    handle._undo.append(hook.remove)
    setattr(model, ENGINE_ATTR, handle)
    handle._undo.append(lambda: model.__dict__.pop(ENGINE_ATTR, None))
    return handle


@contextlib.contextmanager
def elastic_capacity(model: nn.Module, capacity: CapacityOption) -> Iterator[ExpertChoiceHandle]:
    """The engine at `capacity` for the duration of the block, with fresh stats: applied and removed again, or,
    where the model already has it, switched to `capacity` and switched back."""
    if not moe_layers(model):
        raise ValueError(f"capacity= applies to mixture-of-experts transformers (diffusers' "
                         f"NucleusMoEImageTransformer2DModel with MoE blocks); {type(model).__name__} is dense")
    handle = engine_of(model)
    if handle is None:
        handle = apply_expert_choice(model, ExpertChoiceConfig(capacity=capacity))
        handle.reset_stats()
        try:
            yield handle
        finally:
            handle.remove()
        return
    previous, previous_stats = handle.plan, handle.stats
    handle.set_capacity(capacity)
    handle.reset_stats()
    try:
        yield handle
    finally:
        handle.plan, handle.factors = previous, previous.constant or ()
        handle.stats = previous_stats
