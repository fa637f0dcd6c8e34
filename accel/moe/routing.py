"""Expert-choice routing (Zhou et al. 2022), in the arithmetic of diffusers' NucleusMoELayer.

Each expert picks its top-C tokens of one sample by router score, C = ceil(capacity_factor * S / E), so every expert
does the same work and a token is processed by 0..E experts. A token's weights over the experts that picked it are
renormalised to sum to one and scaled by route_scale. The functions here run the same torch ops in the same order
as diffusers 0.42.1 (transformer_nucleusmoe_image.py), so the routing decisions and weights are bit for bit
diffusers'; tests/moe/test_expert_choice.py checks that against the unpatched layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def capacity_tokens(capacity_factor: float, seq_len: int, num_experts: int) -> int:
    """Tokens each expert takes from one sample: diffusers' max(1, ceil(c * S / E)), capped at S (a factor above
    the number of experts would otherwise ask top-k for more tokens than the sample has)."""
    return min(seq_len, max(1, math.ceil(capacity_factor * seq_len / num_experts)))


def router_scores(layer: torch.nn.Module, hidden_states_unmodulated: torch.Tensor,
                  temb: torch.Tensor | None) -> torch.Tensor:
    """(B, S, E) scores of the layer's router on [temb ; LN(h)]: the timestep embedding and the unmodulated state
    (Nucleus-Image's decoupled routing), softmax (or sigmoid) computed in float32 and cast back, as upstream."""
    slen = hidden_states_unmodulated.shape[1]
    if temb is not None:
        router_input = torch.cat([temb.unsqueeze(1).expand(-1, slen, -1), hidden_states_unmodulated], dim=-1)
    else:
        router_input = hidden_states_unmodulated
    logits = layer.gate(router_input)
    if layer.use_sigmoid:
        return torch.sigmoid(logits.float()).to(logits.dtype)
    return F.softmax(logits.float(), dim=-1).to(logits.dtype)


@dataclass
class Routing:
    """One layer's expert-choice assignment for a batch.

    Attributes:
        tokens: (E * B * C,) int64 rows of the flattened (B * S, D) input, expert-contiguous: expert e's B * C
            tokens are rows [e * B * C, (e + 1) * B * C), sample by sample, each sample's by descending score.
        weights: (E * B * C,) routing weights in the scores' dtype (renormalised per token, times route_scale).
        capacity: C, tokens per expert per sample.
    """

    tokens: torch.Tensor
    weights: torch.Tensor
    capacity: int


def expert_choice(scores: torch.Tensor, capacity: int, route_scale: float) -> Routing:
    """Each expert's top-`capacity` tokens per sample, and the tokens' renormalised weights.

    Args:
        scores: (B, S, E) router scores.
        capacity: tokens per expert per sample, 1 <= capacity <= S.
        route_scale: the layer's route_scale.
    """
    affinity = scores.transpose(1, 2)  # (B, E, S)
    top = torch.topk(affinity, k=capacity, dim=-1).indices  # (B, E, C)
    return _assign(affinity, top, route_scale)


def coactivation_choice(scores: torch.Tensor, capacity: int, route_scale: float, pool: float,
                        generator: torch.Generator | None = None) -> Routing:
    """Stochastic co-activation for expert choice (training only; Elastic MoE, Gu et al. 2025, adapted): each
    expert takes a random `capacity`-subset of its top ceil(pool * capacity) tokens, so experts learn to work in the
    combinations a larger capacity would give them, at the same compute per step.

    Args:
        scores, capacity, route_scale: as `expert_choice`.
        pool: candidate pool as a multiple of the capacity, >= 1 (1: plain top-C).
        generator: for the random subsets (on scores' device), or None for torch's default.
    """
    bs, slen, num_experts = scores.shape
    affinity = scores.transpose(1, 2)  # (B, E, S)
    pool_size = min(slen, max(capacity, math.ceil(pool * capacity)))
    candidates = torch.topk(affinity, k=pool_size, dim=-1).indices  # (B, E, K)
    noise = torch.rand(bs, num_experts, pool_size, generator=generator, device=scores.device)
    top = candidates.gather(-1, noise.argsort(dim=-1)[..., :capacity])  # (B, E, C)
    return _assign(affinity, top, route_scale)


def _assign(affinity: torch.Tensor, top: torch.Tensor, route_scale: float) -> Routing:
    """Routing from each expert's chosen tokens top (B, E, C) of affinity (B, E, S): diffusers' weights."""
    bs, num_experts, slen = affinity.shape
    gating = affinity.gather(dim=-1, index=top)  # (B, E, C)
    offsets = torch.arange(bs, device=affinity.device, dtype=torch.long).view(bs, 1, 1) * slen
    tokens = (offsets + top).transpose(0, 1).reshape(num_experts, -1).reshape(-1)
    weights = gating.transpose(0, 1).reshape(num_experts, -1).reshape(-1)
    token_sums = torch.zeros(bs * slen, device=affinity.device, dtype=weights.dtype)
    token_sums.scatter_add_(0, tokens, weights)
    weights = weights / (token_sums.index_select(0, tokens) + 1e-12) * route_scale
    return Routing(tokens=tokens, weights=weights, capacity=top.shape[-1])
