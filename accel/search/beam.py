"""Diffusion latent beam search with the lookahead estimator (DLBS).

Oshima et al., "Inference-Time Text-to-Video Alignment with Diffusion Latent Beam Search" (arXiv 2501.19252), on
flow models through the SDE of RBF (DLBS's DDIM eta = 1 proposals become SDE steps; its eta = 0 lookahead becomes
Euler steps of the ODE).

Per step: each of B beams draws K SDE successors at the next grid point sigma_j; each successor is scored on the
x0 predicted after L deterministic steps over the sub-grid sigma_j * m / L, m = L .. 1 (L calls: the first, at
sigma_j, is also the successor's next drift, so it is cached, not recomputed as the paper's code does); the best B
of the B K successors become the beams. The transition into the last grid point uses L = 1: its x0 estimate *is*
the final sample, so the final reward is exact.

search_range = (hi, lo), as DLBS's code: branch only on transitions into grid points whose flow sigma lies in
[lo, hi]; elsewhere each beam takes its single SDE successor (1 call, no scoring). The B beams run throughout, so
nothing needs padding when the range starts; a budget spent on fewer branching steps affords more beams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from accel.schedulers.sde import SDEConfig, sde_step
from accel.search.base import SearchContext, SearchResult, check_int, check_sampler


@dataclass(frozen=True)
class BeamConfig:
    """candidates: K successors per beam per step; lookahead: L deterministic steps (1 = the one-step x0);
    beams: B (None: as many as the budget affords; when even one beam does not fit, L then K are lowered);
    search_range: (hi, lo) flow sigmas of the grid points where beams branch (default (1, 0): everywhere);
    sampler: the SDE (RBF's VP default)."""

    name: ClassVar[str] = "beam"
    candidates: int = 2
    lookahead: int = 2
    beams: int | None = None
    search_range: tuple[float, float] = (1.0, 0.0)
    sampler: SDEConfig = SDEConfig()

    def __post_init__(self):
        check_int("candidates", self.candidates)
        check_int("lookahead", self.lookahead)
        check_int("beams", self.beams, optional=True)
        ok = (isinstance(self.search_range, (tuple, list)) and len(self.search_range) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.search_range)
              and 0 <= self.search_range[1] <= self.search_range[0] <= 1)
        if not ok:
            raise ValueError(f"search_range must be (hi, lo) with 0 <= lo <= hi <= 1 (flow sigmas), got "
                             f"{self.search_range!r}")
        check_sampler(self.sampler)


def beam_cost(steps: int, k: int, lookahead: int, searched: list[bool] | None = None) -> int:
    """Calls per beam: 1 at the start, K L per branching middle transition, K into the last grid point if it
    branches, 1 per transition that does not. searched[i]: whether transition i -> i + 1 branches (default all)."""
    if steps == 1:
        return 1
    searched = [True] * (steps - 1) if searched is None else searched
    middle = sum(k * lookahead if s else 1 for s in searched[:-1])
    return 1 + middle + (k if searched[-1] else 1)


def plan_beam(calls: int, steps: int, config: BeamConfig, searched: list[bool] | None = None) -> tuple[int, int, int]:
    """(B, K, L) within the budget; K = L = B = 1 always fits (it is one plain sample)."""
    for k in range(config.candidates, 0, -1):
        for la in range(config.lookahead, 0, -1):
            b = calls // beam_cost(steps, k, la, searched)
            b = b if config.beams is None else min(b, config.beams)
            if b >= 1:
                return b, k, la
    raise AssertionError("unreachable: one sample fits the budget")


def lookahead_x0(ctx: SearchContext, x: torch.Tensor, pred, r: torch.Tensor, steps: int) -> torch.Tensor:
    """x0 after `steps` Euler steps of the ODE from (x, r) to r / steps: steps - 1 calls."""
    ode = SDEConfig(interpolant=ctx.sampler.interpolant, diffusion="zero", diffusion_norm=0.0)
    for m in range(steps, 1, -1):
        r_now, r_next = r * m / steps, r * (m - 1) / steps
        x = sde_step(x, pred, r_now, r_next, ode, ctx.interp, None)
        pred = ctx.predict_at(x, r_next)
    return pred.x0


def branching(ctx: SearchContext, search_range: tuple[float, float]) -> list[bool]:
    """Whether each transition i -> i + 1 branches: the flow sigma of grid point i + 1 lies in [lo, hi]."""
    hi, lo = search_range
    sigmas = [float(ctx.interp.flow_time(r)[0]) for r in ctx.rs[1:ctx.steps]]
    return [lo - 1e-9 <= s <= hi + 1e-9 for s in sigmas]


def run_beam(ctx: SearchContext, config: BeamConfig) -> SearchResult:
    searched = branching(ctx, config.search_range)
    b, k, la = plan_beam(ctx.calls, ctx.steps, config, searched)
    x = ctx.noise(b)
    pred = ctx.predict(x, 0)
    r = ctx.score(pred.x0) if ctx.steps == 1 else None
    for i in range(ctx.steps - 1):
        last = i + 1 == ctx.steps - 1
        if not searched[i]:  # outside search_range: one successor per beam, no scoring
            x = ctx.step(x, pred, i)
            pred = ctx.predict(x, i + 1)
            r = ctx.score(pred.x0) if last else None
            if last:
                ctx.record(i, r, float(r.max()))
            continue
        idx = torch.arange(b, device=x.device).repeat_interleave(k)
        xc = ctx.step(x[idx], pred.select(idx), i)  # (B K, ...) successors at grid point i + 1
        pc = ctx.predict(xc, i + 1)
        rc = ctx.score(pc.x0 if last else lookahead_x0(ctx, xc, pc, ctx.rs[i + 1], la))
        top = torch.sort(rc, descending=True, stable=True).indices[:b]
        x, pred, r = xc[top.to(x.device)], pc.select(top.to(x.device)), rc[top]
        ctx.record(i, rc, float(r.max()))
    # The step into sigma = 0 returns the last x0 estimate, which is what r scored.
    return ctx.result(ctx.step(x, pred, ctx.steps - 1), r, {"beams": b, "candidates": k, "lookahead": la,
                                                             "branching_steps": sum(searched)})
