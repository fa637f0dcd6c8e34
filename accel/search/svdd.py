"""SVDD-style per-step selection: each chain proposes several SDE successors per step and keeps the best.

Li et al., "Derivative-Free Guidance in Continuous and Discrete Diffusion Models with Soft Value-Based Decoding"
(SVDD, arXiv 2408.08252): a successor is scored on its x0 estimate at the next grid point (1 NFE each; that
prediction is the successor's next drift, so nothing is recomputed). SVDD's soft value rule samples the kept
successor from softmax(r / alpha); alpha = 0 (the default) is its argmax limit, as RBF's baseline runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from accel.schedulers.sde import SDEConfig
from accel.search.base import SearchContext, SearchResult, check_float, check_int, check_sampler
from accel.search.resampling import resample


@dataclass(frozen=True)
class SVDDConfig:
    """particles: independent chains (fewer if the budget cannot carry them); children: successors per chain per
    step (None: as many as the budget affords); alpha: SVDD's temperature (0: keep the best successor; > 0: sample
    it from softmax(reward / alpha), the paper's soft value rule); sampler: the SDE (RBF's VP default)."""

    name: ClassVar[str] = "svdd"
    particles: int = 1
    children: int | None = None
    alpha: float = 0.0
    sampler: SDEConfig = SDEConfig()

    def __post_init__(self):
        check_int("particles", self.particles)
        check_int("children", self.children, optional=True)
        check_float("alpha", self.alpha, 0.0, 1e6)
        check_sampler(self.sampler)


def plan_svdd(calls: int, steps: int, particles: int, children: int | None) -> tuple[int, int]:
    """(chains B, children N): B start calls + (steps - 1) B N proposals <= calls."""
    b = min(particles, calls // steps)
    if steps == 1:
        return b, 0
    n = (calls - b) // ((steps - 1) * b)
    return b, n if children is None else min(children, n)


def run_svdd(ctx: SearchContext, config: SVDDConfig) -> SearchResult:
    b, n = plan_svdd(ctx.calls, ctx.steps, config.particles, config.children)
    x = ctx.noise(b)
    pred = ctx.predict(x, 0)
    r = ctx.score(pred.x0) if ctx.steps == 1 else None
    for i in range(ctx.steps - 1):
        idx = torch.arange(b, device=x.device).repeat_interleave(n)
        xc = ctx.step(x[idx], pred.select(idx), i)  # (B N, ...) successors at grid point i + 1
        pc = ctx.predict(xc, i + 1)
        rc = ctx.score(pc.x0)
        sel = torch.arange(b) * n + _choose(ctx, rc.view(b, n), config.alpha)
        x, pred, r = xc[sel.to(x.device)], pc.select(sel.to(x.device)), rc[sel]
        ctx.record(i, rc, float(r.max()))
    # The step into sigma = 0 returns the last x0 estimate, so r is the returned samples' reward.
    return ctx.result(ctx.step(x, pred, ctx.steps - 1), r, {"particles": b, "children": n, "alpha": config.alpha})


def _choose(ctx: SearchContext, rewards: torch.Tensor, alpha: float) -> torch.Tensor:
    """The kept child of each chain, (B,): argmax (alpha = 0) or a draw from softmax(rewards / alpha)."""
    if alpha == 0:
        return rewards.argmax(1)
    probs = torch.softmax(rewards.double() / alpha, dim=1)
    return torch.cat([resample(p, 1, "multinomial", ctx.generator) for p in probs])
