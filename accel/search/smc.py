"""Particle filters over the flow SDE: SMC / FK steering, and entropic particle filtering (ePF).

SMC / FK steering: Singhal et al., "A General Framework for Inference-time Scaling and Steering of Diffusion
Models" (arXiv 2501.06848), with ESS-triggered resampling, on flow models through the SDE of RBF (resampling under
the deterministic ODE would only duplicate identical endpoints: FK-steering issue #7).
ePF: Giannone et al., "Mitigating Premature Exploitation in Particle-based Monte Carlo for Inference-Time Scaling"
(arXiv 2510.05825): resample every step from tempered weights softmax(logw / tau), tau from entropic annealing.

K = budget // (cost of one sample) particles. At every grid point each particle's x0 estimate is scored (its
prediction is needed for the step anyway: 0 extra NFE); the potential's log adds to the particle's log-weight.
Potentials (FK's, on rewards r_t of the x0 estimates, lambda = lam):
  "diff": lam (r_t - r_{t-1}) with r_{-1} = 0 (telescopes: the target is p(x0) exp(lam r(x0)), exactly);
  "max": lam max_{s <= t} r_s;  "rt": lam r_t.
The step into sigma = 0 returns the last x0 estimate, so the last scores are the final samples' rewards; the
result is all K final particles, best reward first, with their log-weights (argmax output needs no correction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from accel.config import check_choice
from accel.schedulers.sde import SDEConfig
from accel.search.base import SearchContext, SearchResult, check_float, check_int, check_sampler
from accel.search.beam import lookahead_x0
from accel.search.resampling import RESAMPLERS, TEMPERATURES, entropic_temperature, ess, normalize, resample

POTENTIALS = ("diff", "max", "rt")


@dataclass(frozen=True)
class SMCConfig:
    """FK steering / SMC. lam: potential strength (FK's lambda; FK's default 10); potential: see the module;
    ess_threshold: resample when ESS < ess_threshold * K (FK's adaptive 0.5; 1.0 resamples almost every step, as
    RBF's SMC baseline); resampling: "multinomial" (FK) or "systematic"; sampler: the SDE (RBF's VP default)."""

    name: ClassVar[str] = "smc"
    lam: float = 10.0
    potential: str = "diff"
    ess_threshold: float = 0.5
    resampling: str = "multinomial"
    sampler: SDEConfig = SDEConfig()

    def __post_init__(self):
        check_float("lam", self.lam, 0.0, 1e6)
        check_choice("potential", self.potential, POTENTIALS)
        check_float("ess_threshold", self.ess_threshold, 0.0, 1.0)
        check_choice("resampling", self.resampling, RESAMPLERS)
        check_sampler(self.sampler)


@dataclass(frozen=True)
class EPFConfig:
    """Entropic particle filtering. Resamples every step from softmax(logw / tau): tau = 1 unless ESS / K < kappa
    while progress (step / steps) < early, then by `temperature` ("ess" default, "entropy", "base" with tau_max).
    Defaults are the paper's (kappa 0.5, early 0.5, systematic resampling); potential "rt": the particle's current
    reward, as the LLM version's PRM score of the current prefix. lookahead: ePF's look-ahead modulation carried
    to diffusion (the note's LaM): on steps with progress < lookahead_until, particles are scored on the x0 after
    `lookahead` deterministic steps (DLBS's estimator, lookahead - 1 extra calls per particle) instead of the
    blurry one-step x0; 1 (the default) turns it off. Fewer particles fit the budget when it is on."""

    name: ClassVar[str] = "epf"
    lam: float = 10.0
    potential: str = "rt"
    kappa: float = 0.5
    early: float = 0.5
    temperature: str = "ess"
    tau_max: float = 2.0
    resampling: str = "systematic"
    lookahead: int = 1
    lookahead_until: float = 0.5
    sampler: SDEConfig = SDEConfig()

    def __post_init__(self):
        check_float("lam", self.lam, 0.0, 1e6)
        check_choice("potential", self.potential, POTENTIALS)
        check_int("lookahead", self.lookahead)
        check_float("lookahead_until", self.lookahead_until, 0.0, 1.0)
        check_float("kappa", self.kappa, 0.0, 1.0)
        check_float("early", self.early, 0.0, 1.0)
        check_choice("temperature", self.temperature, TEMPERATURES)
        check_float("tau_max", self.tau_max, 1.0, 1e6)
        check_choice("resampling", self.resampling, RESAMPLERS)
        check_sampler(self.sampler)


def log_potential(kind: str, lam: float, r: torch.Tensor, r_prev: torch.Tensor, r_max: torch.Tensor) -> torch.Tensor:
    """The log of one step's potential (float64, (K,)); r_max already includes r."""
    r, r_prev, r_max = r.double(), r_prev.double(), r_max.double()
    if kind == "diff":
        return lam * (r - r_prev)
    if kind == "max":
        return lam * r_max
    return lam * r


# decide(logw, step) -> (resampling probabilities or None to keep the particles, trace extras)
Decision = Callable[[torch.Tensor, int], "tuple[torch.Tensor | None, dict]"]


def lookahead_steps(steps: int, lookahead: int, until: float) -> list[bool]:
    """Whether grid point i is scored with the lookahead estimator: i / steps < until, never the last point."""
    return [lookahead > 1 and i < steps - 1 and i / steps < until for i in range(steps)]


def run_particle_filter(ctx: SearchContext, potential: str, lam: float, method: str, decide: Decision,
                        lookahead: int = 1, lookahead_until: float = 0.0) -> SearchResult:
    """The loop shared by SMC and ePF: predict, score (optionally on a lookahead x0), weigh, maybe resample,
    SDE step."""
    ahead = lookahead_steps(ctx.steps, lookahead, lookahead_until)
    k = max(1, ctx.calls // (ctx.steps + (lookahead - 1) * sum(ahead)))
    if k * (ctx.steps + (lookahead - 1) * sum(ahead)) > ctx.calls:  # not even one particle with lookahead
        ahead, lookahead = [False] * ctx.steps, 1
        k = ctx.calls // ctx.steps
    x = ctx.noise(k)
    logw = torch.zeros(k, dtype=torch.float64)
    r_prev = torch.zeros(k)
    r_max = torch.full((k,), -float("inf"))
    resampled = 0
    for i in range(ctx.steps):
        pred = ctx.predict(x, i)
        r = ctx.score(lookahead_x0(ctx, x, pred, ctx.rs[i], lookahead) if ahead[i] else pred.x0)
        r_max = torch.maximum(r_max, r)
        logw = logw + log_potential(potential, lam, r, r_prev, r_max)
        r_prev = r
        # No selection among one particle, nor after the last step (its scores are the final rewards); skipping
        # it also keeps K = 1 identical to plain SDE sampling (resampling would consume generator draws).
        probs, extra = (None, {}) if i == ctx.steps - 1 or k == 1 else decide(logw, i)
        ctx.record(i, r, float(r.max()), {"ess": ess(logw), "resampled": probs is not None} | extra)
        if probs is not None:
            idx = resample(probs, k, method, ctx.generator)
            x, pred, r_prev, r_max = x[idx.to(x.device)], pred.select(idx.to(x.device)), r_prev[idx], r_max[idx]
            logw = torch.zeros(k, dtype=torch.float64)
            resampled += 1
        x = ctx.step(x, pred, i)
    extra = {"particles": k, "resampled": resampled, "lookahead_steps": sum(ahead)}
    return ctx.result(x, r_prev, extra, log_weights=logw)


def run_smc(ctx: SearchContext, config: SMCConfig) -> SearchResult:
    k = ctx.calls // ctx.steps

    def decide(logw, i):
        return (normalize(logw) if ess(logw) < config.ess_threshold * k else None), {}

    return run_particle_filter(ctx, config.potential, config.lam, config.resampling, decide)


def run_epf(ctx: SearchContext, config: EPFConfig) -> SearchResult:
    def decide(logw, i):
        progress = i / ctx.steps
        tau = entropic_temperature(logw, progress, config.temperature, config.kappa, config.early, config.tau_max)
        return normalize(logw / tau), {"tau": tau}

    return run_particle_filter(ctx, config.potential, config.lam, config.resampling, decide, config.lookahead,
                               config.lookahead_until)
