"""Best-of-N: N independent samples, keep the best (random search over initial noise).

The baseline of Ma et al., "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps"
(arXiv 2501.09732), and of RBF and DLBS. N = the number of whole samples the budget buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from accel.schedulers.sde import SDEConfig
from accel.search.base import SearchContext, SearchResult, check_sampler


@dataclass(frozen=True)
class BestOfNConfig:
    """sampler: the flow ODE by default (the noise is the only randomness; as plain sampling). On a re-noising
    distilled student the shortcut "bon" draws with the student's rule instead (accel.search.registry.for_student)."""

    name: ClassVar[str] = "bon"
    sampler: SDEConfig = SDEConfig.ode()

    def __post_init__(self):
        check_sampler(self.sampler)


def run_best_of_n(ctx: SearchContext, config: BestOfNConfig) -> SearchResult:
    """N = budget // (cost of one sample) samples, integrated a group of chunks at a time (one chunk per process:
    bounded memory), best first."""
    n = ctx.calls // ctx.steps
    x_all = ctx.noise(n)
    finals, rewards = [], []
    for chunk, start in enumerate(range(0, n, ctx.width)):
        x = x_all[start:start + ctx.width]
        for i in range(ctx.steps):
            x = ctx.step(x, ctx.predict(x, i), i)
        r = ctx.score(x)
        finals.append(x)
        rewards.append(r)
        ctx.record(chunk, r, float(torch.cat(rewards).max()))
    return ctx.result(torch.cat(finals), torch.cat(rewards), {"n": n})
