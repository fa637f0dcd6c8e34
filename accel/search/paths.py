"""Search over paths (SoP).

Ma et al., "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps" (arXiv 2501.09732), as in
RBF's baseline: N paths are integrated with the ODE to a start level; then repeatedly each path branches into M
copies re-noised *forward* by `forward` grid steps with the exact forward kernel of the interpolant
(mean alpha_f / alpha_c x, variance sigma_f^2 - (alpha_f / alpha_c)^2 sigma_c^2), each copy is integrated
*backward* by `backward` (> forward) grid steps, and the best N of the N M copies are kept, until sigma = 0.
Copies are scored on the x0 estimate of their last model call (free); at the end on the final samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from accel.schedulers.sde import SDEConfig
from accel.search.base import SearchContext, SearchResult, check_float, check_int, check_sampler
from accel.search.bon import BestOfNConfig, run_best_of_n


@dataclass(frozen=True)
class SearchOverPathsConfig:
    """paths: N kept; branches: M per path (None: as many as the budget affords); start, forward, backward:
    fractions of the grid's steps (ODE to the start, re-noise back by forward, integrate on by backward);
    sampler: the ODE by default (SoP's own setting).

    A budget too small for one search iteration with N M >= 2 runs best-of-N instead (recorded in
    trace.extra["fallback"]): with no branching there is nothing else to search over."""

    name: ClassVar[str] = "sop"
    paths: int = 2
    branches: int | None = None
    start: float = 0.25
    forward: float = 0.1
    backward: float = 0.2
    sampler: SDEConfig = SDEConfig.ode()

    def __post_init__(self):
        check_int("paths", self.paths)
        check_int("branches", self.branches, optional=True)
        check_float("start", self.start, 0.0, 1.0)
        check_float("forward", self.forward, 0.0, 1.0, low_open=True)
        check_float("backward", self.backward, 0.0, 1.0, low_open=True)
        if self.backward <= self.forward:
            raise ValueError(f"backward ({self.backward}) must exceed forward ({self.forward}) to make progress")
        check_sampler(self.sampler)


def sop_schedule(steps: int, config: SearchOverPathsConfig) -> tuple[int, list[tuple[int, int]]]:
    """(start index i0, [(re-noise to index, integrate up to index), ...]) on a grid of `steps` steps."""
    i0 = min(max(1, round(config.start * steps)), steps)
    f = max(1, round(config.forward * steps))
    b = max(f + 1, round(config.backward * steps))
    level, schedule = i0, []
    while level < steps:
        low = max(level - f, 0)
        level = min(low + b, steps)
        schedule.append((low, level))
    return i0, schedule


def plan_sop(calls: int, steps: int, config: SearchOverPathsConfig) -> tuple[int, int] | None:
    """(N, M) with N i0 + N M sum(backward spans) <= calls and N M >= 2, or None when none fits."""
    i0, schedule = sop_schedule(steps, config)
    per_branch = sum(hi - lo for lo, hi in schedule)
    if not schedule:
        return None
    for n in range(config.paths, 0, -1):
        m = (calls - n * i0) // (n * per_branch)
        m = m if config.branches is None else min(m, config.branches)
        if m >= 1 and n * m >= 2:
            return n, m
    return None


def renoise(ctx: SearchContext, x: torch.Tensor, i_from: int, i_to: int) -> torch.Tensor:
    """Exact forward kernel of the interpolant from grid point i_from back to the noisier i_to < i_from."""
    rc, rf = ctx.rs[i_from], ctx.rs[i_to]
    a = ctx.interp.alpha(rf) / ctx.interp.alpha(rc)
    std = torch.sqrt((ctx.interp.sigma(rf) ** 2 - a**2 * ctx.interp.sigma(rc) ** 2).clamp(min=0))
    return (a.to(x.dtype) * x + std.to(x.dtype) * ctx.randn(tuple(x.shape))).to(x.dtype)


def run_search_over_paths(ctx: SearchContext, config: SearchOverPathsConfig) -> SearchResult:
    plan = plan_sop(ctx.calls, ctx.steps, config)
    if plan is None:
        result = run_best_of_n(ctx, BestOfNConfig(sampler=config.sampler))
        result.trace.extra["fallback"] = "best-of-N: the budget affords no search-over-paths iteration"
        return result
    n, m = plan
    i0, schedule = sop_schedule(ctx.steps, config)
    x = ctx.noise(n)
    for i in range(i0):
        x = ctx.step(x, ctx.predict(x, i), i)
    level, r = i0, None
    for it, (low, high) in enumerate(schedule):
        idx = torch.arange(n, device=x.device).repeat_interleave(m)
        xb = renoise(ctx, x[idx], level, low)
        for i in range(low, high):
            pred = ctx.predict(xb, i)
            xb = ctx.step(xb, pred, i)
        rb = ctx.score(xb if high == ctx.steps else pred.x0)
        top = torch.sort(rb, descending=True, stable=True).indices[:n]
        x, r, level = xb[top.to(x.device)], rb[top], high
        ctx.record(it, rb, float(r.max()), {"level": level})
    return ctx.result(x, r, {"paths": n, "branches": m, "schedule": schedule})
