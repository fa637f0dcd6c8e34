"""Rollover budget forcing (RBF) over the flow SDE.

Kim et al., "Inference-Time Scaling for Flow Models via Stochastic Generation and Rollover Budget Forcing"
(arXiv 2503.19385), part 3, written from the paper's description:
1. Initial noise selection: B chains x N0 candidates at the first grid point, scored on their x0 estimates (1 call
   each); each chain keeps its best, whose reward is the chain's running best R*.
2. Per-step quota q = floor((calls - B N0) / ((T - 1) B)) for the T - 1 transitions (T = grid steps).
3. A proposal is one SDE step from the chain's state (0 calls: the drift is cached) plus one call at the next grid
   point, scored on its x0 estimate. The first proposal that beats R* (the best of *any* earlier step) is accepted
   at once and the unspent quota rolls over to the next step; when the step's quota is spent without improvement,
   the chain advances with the step's best proposal (no rollover).
4. Final-step rule: the transition into the last grid point gets all the remaining budget (best-of-n there).
5. The chains' final samples compete by reward.

Ending. The sample is the x0 estimate at the last grid point, which is exactly the final Euler step to sigma = 0.
On the pipeline's own grid (SDEConfig.grid = "pipeline", the default) that is a fully integrated sample, right for
any model; RBF's paper uses a 10-point grid ending at r = 0.436 (SDEConfig(grid="rbf")), i.e. a one-step x0
estimate, which only suits few-step distilled models (FLUX.1-schnell).
On a full grid the last transitions carry almost no noise (g = 3 r^2), so the final-step rule's proposals there
are nearly identical; search_until > 0 moves the final-step rule to the last grid point with r >= search_until
(the search ends where the paper's grid ends) and then integrates the winning chain to sigma = 0 (T - 1 - last
calls, reserved from the budget), so the sample is still fully integrated.
Chains advance in lock-step rounds, one proposal per chain per round, batched across chains (levels may differ:
the model takes a per-sample sigma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from accel.schedulers.sde import FlowPrediction, SDEConfig
from accel.search.base import SearchContext, SearchResult, check_float, check_int, check_sampler


@dataclass(frozen=True)
class RBFConfig:
    """chains: B (the paper's batch_size 2); init_particles: N0 candidates per chain at the start (None: a tenth of
    the budget's calls over the chains, as the paper's 25 x 2 of 500); search_until: search the grid points with
    r >= search_until only, then integrate the winning chain to sigma = 0 with the sampler (0: search the whole
    grid, the default); sampler: VP SDE with g = 3 r^2 (the paper's code default) on the pipeline's grid (see the
    module docstring for grid="rbf")."""

    name: ClassVar[str] = "rbf"
    chains: int = 2
    init_particles: int | None = None
    search_until: float = 0.0
    sampler: SDEConfig = SDEConfig()

    def __post_init__(self):
        check_int("chains", self.chains)
        check_float("search_until", self.search_until, 0.0, 1.0)
        check_int("init_particles", self.init_particles, optional=True)
        check_sampler(self.sampler)


def plan_rbf(calls: int, steps: int, chains: int, init: int | None) -> tuple[int, int, int]:
    """(B, N0, q): B N0 + B q (T - 1) <= calls with q >= 1 (one plain sample always fits: B = N0 = q = 1)."""
    if steps == 1:
        return 1, calls, 0
    b = max(1, min(chains, calls // steps))
    n0 = init if init is not None else max(1, calls // 10 // b)
    n0 = max(1, min(n0, (calls - b * (steps - 1)) // b))
    q = (calls - b * n0) // (b * (steps - 1))
    return b, n0, q


@dataclass
class _Chain:
    x: torch.Tensor  # (1, ...) at grid point `level`
    pred: FlowPrediction
    best: float  # R*: the best reward the chain has seen at any step
    level: int = 0
    budget: int = 0
    count: int = 0
    step_best: tuple[torch.Tensor, FlowPrediction, float] | None = None

    def advance(self, x, pred, reward: float, budget: int) -> None:
        self.x, self.pred, self.level, self.budget = x, pred, self.level + 1, budget
        self.count, self.step_best = 0, None
        self.best = max(self.best, reward)

    def offer(self, x, pred, reward: float, quota: int) -> None:
        """Rollover budget forcing's rule for one proposal."""
        self.count += 1
        if self.step_best is None or reward > self.step_best[2]:
            self.step_best = (x, pred, reward)
        if reward > self.best:  # early accept; the unspent quota rolls over
            self.advance(x, pred, reward, self.budget - self.count + quota)
        elif self.count >= self.budget:  # forced advance with the step's best
            self.advance(*self.step_best, quota)


def _init_chains(ctx: SearchContext, b: int, n0: int, q: int) -> list[_Chain]:
    x = ctx.noise(b * n0)
    pred = ctx.predict(x, 0)
    r = ctx.score(pred.x0)
    best = r.view(b, n0).argmax(1) + torch.arange(b) * n0
    ctx.record(0, r, float(r.max()), {"phase": "init"})
    return [_Chain(x[j:j + 1], pred.select(torch.tensor([j], device=x.device)), float(r[j]), budget=q)
            for j in best.tolist()]


def _rollover_rounds(ctx: SearchContext, chains: list[_Chain], q: int, last: int) -> None:
    """Advance every chain to grid point last - 1, one batched proposal per unfinished chain per round."""
    rounds = 0
    while True:
        active = [c for c in chains if c.level < last - 1]
        if not active:
            return
        xs = torch.cat([ctx.step(c.x, c.pred, c.level) for c in active])
        levels = torch.tensor([c.level + 1 for c in active], device=ctx.rs.device)
        preds = ctx.predict(xs, levels)
        rs = ctx.score(preds.x0)
        for j, c in enumerate(active):
            c.offer(xs[j:j + 1], preds.select(torch.tensor([j], device=xs.device)), float(rs[j]), q)
        rounds += 1
        ctx.record(rounds, rs, max(c.best for c in chains), {"levels": [c.level for c in chains]})


def _last_step(ctx: SearchContext, chains: list[_Chain], last: int, reserve: int) -> None:
    """All remaining calls but `reserve` on the transition into grid point `last`, split evenly over the chains;
    each chain moves to its best proposal."""
    b, rem = len(chains), ctx.remaining - reserve
    counts = [rem // b + (j < rem % b) for j in range(b)]
    xs = torch.cat([ctx.step(c.x.expand(n, *c.x.shape[1:]), c.pred.select(torch.zeros(n, dtype=torch.long,
                    device=c.x.device)), c.level) for c, n in zip(chains, counts)])
    preds = ctx.predict(xs, last)
    rs = ctx.score(preds.x0)
    start = 0
    for c, n in zip(chains, counts):
        j = start + int(rs[start:start + n].argmax())
        c.x, c.pred = xs[j:j + 1], preds.select(torch.tensor([j], device=xs.device))
        c.level, c.best = last, float(rs[j])
        start += n
    ctx.record(len(ctx.trace.steps), rs, float(rs.max()), {"phase": "last step", "proposals": counts})


def _finish(ctx: SearchContext, chain: _Chain) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate one chain from its grid point to sigma = 0 with the sampler (1 call per remaining grid point)."""
    x, pred = chain.x, chain.pred
    for i in range(chain.level, ctx.steps - 1):
        x = ctx.step(x, pred, i)
        pred = ctx.predict(x, i + 1)
    final = ctx.step(x, pred, ctx.steps - 1)
    return final, ctx.score(final)


def last_searched(ctx: SearchContext, search_until: float) -> int:
    """The last grid point searched: the last one with r >= search_until (at least 1, at most T - 1)."""
    above = int((ctx.rs[:-1] >= search_until).sum())
    return min(max(above - 1, 1), ctx.steps - 1)


def run_rbf(ctx: SearchContext, config: RBFConfig) -> SearchResult:
    if ctx.steps == 1:  # no transition to search over: best of the start candidates
        x = ctx.noise(ctx.calls)
        pred = ctx.predict(x, 0)
        return ctx.result(pred.x0, ctx.score(pred.x0), {"chains": 1, "init_particles": ctx.calls, "quota": 0})
    last = last_searched(ctx, config.search_until)
    reserve = ctx.steps - 1 - last  # calls to finish the winning chain after the search
    b, n0, q = plan_rbf(ctx.calls - reserve, last + 1, config.chains, config.init_particles)
    chains = _init_chains(ctx, b, n0, q)
    _rollover_rounds(ctx, chains, q, last)
    _last_step(ctx, chains, last, reserve)
    extra = {"chains": b, "init_particles": n0, "quota": q, "last_searched": last}
    if reserve == 0:  # the last grid point's x0 estimate is the final sample: every chain's result is final
        finals = torch.cat([c.pred.x0 for c in chains])
        return ctx.result(finals, torch.tensor([c.best for c in chains]), extra)
    winner = max(chains, key=lambda c: c.best)
    final, reward = _finish(ctx, winner)
    return ctx.result(final, reward, extra)
