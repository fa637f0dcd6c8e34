"""What every search strategy shares: the budgeted context, the trace, the result.

A strategy sees one prompt: a Denoiser, the prompt's conditioning for one sample, a time grid, a reward and an NFE
budget. It speaks only the Denoiser / sampler / reward contracts. `SearchContext` is the one place that calls the
model (so the budget is enforced in one place, never exceeded), batches particles in chunks (a large particle count
never holds all particles' activations at once), draws every random number from one generator (a fixed seed gives
the same result), scores samples with the reward, and records the trace.

Units. NFE as the Denoiser counts it (CFG counts 2). A *call* is one sample through the denoiser: cond.passes NFE.
A plain sample costs grid.num_steps calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from accel.core.denoiser import Cond, Denoiser, Prepared
from accel.core.reward import Reward
from accel.rewards.base import evaluate
from accel.schedulers.sde import FlowPrediction, SDEConfig, make_interpolant, predict, sde_step, sde_time_grid


@dataclass
class SearchTrace:
    """What a search spent and saw.

    nfe: NFE spent (the Denoiser's count; <= budget). budget: the NFE budget. seconds: wall time.
    rewards: the best reward known after each step of the strategy. steps: per step {"step", "nfe", "best",
    "mean"} (+ strategy extras such as "ess", "resampled"). reward_calls: samples scored.
    """

    nfe: int = 0
    budget: int = 0
    seconds: float = 0.0
    rewards: list[float] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    reward_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """samples: (K, ...) final latents (at sigma = 0), best first; rewards: (K,) their rewards; trace;
    log_weights: (K,) importance log-weights of the samples (particle methods; None for the others)."""

    samples: torch.Tensor
    rewards: torch.Tensor
    trace: SearchTrace
    log_weights: torch.Tensor | None = None

    @property
    def best(self) -> torch.Tensor:
        """The chosen sample, (1, ...)."""
        return self.samples[:1]


class SearchContext:
    """The budgeted view of one prompt that strategies work through (see the module docstring).

    Args:
        denoiser: the adapter; its NFE counter is the budget's meter.
        prepared: Prepared for ONE sample of the prompt (cond.batch == 1): its grid, its conditioning, and the
            decode options; prepared.x only gives the latent shape (particles draw their own noise).
        prompt: the prompt, for the reward.
        reward: the Reward (reads pixels or latents).
        nfe: the NFE budget.
        sampler: the SDE (or ODE) sampler; its grid is sde_time_grid(prepared.grid, sampler).
        generator: the source of all noise (CPU generator recommended: same draws on any device).
        chunk_size: samples per model call / decode / reward call.
    """

    def __init__(self, denoiser: Denoiser, prepared: Prepared, prompt: str, reward: Reward, nfe: int,
                 sampler: SDEConfig, generator: torch.Generator | None, chunk_size: int = 16):
        if prepared.cond.batch != 1:
            raise ValueError(f"search runs one prompt at a time: prepared.cond.batch must be 1, got "
                             f"{prepared.cond.batch}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if reward.reads not in ("pixels", "latents"):
            raise ValueError(f"reward.reads must be 'pixels' or 'latents', got {reward.reads!r}")
        self.denoiser, self.prepared, self.prompt, self.reward = denoiser, prepared, prompt, reward
        self.sampler, self.generator, self.chunk_size = sampler, generator, chunk_size
        self.interp = make_interpolant(sampler.interpolant)
        self.grid = sde_time_grid(prepared.grid, sampler)
        self.rs = self.grid.sigmas.to(prepared.x.device)
        self.passes = prepared.cond.passes
        self.steps = self.grid.num_steps  # calls per plain sample
        self.budget = int(nfe)
        self.calls = self.budget // self.passes
        if self.calls < self.steps:
            raise ValueError(f"nfe={nfe} is below the cost of one sample: {self.steps} steps x {self.passes} "
                             f"NFE = {self.steps * self.passes}")
        self.trace = SearchTrace(budget=self.budget)
        self._conds: dict[int, Cond] = {}
        self._start_nfe = denoiser.nfe
        self._start_time = time.perf_counter()

    # --- budget ---------------------------------------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Calls spent so far."""
        return (self.denoiser.nfe - self._start_nfe) // self.passes

    @property
    def remaining(self) -> int:
        """Calls left."""
        return self.calls - self.spent

    # --- model ----------------------------------------------------------------------------------------------

    def noise(self, n: int) -> torch.Tensor:
        """n start latents, (n, ...). Drawn one sample at a time so that particle 0 is the noise a pipeline call
        with the same (fresh) generator would start from."""
        shape = (1, *self.prepared.x.shape[1:])
        return torch.cat([self.randn(shape) for _ in range(n)])

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        x = self.prepared.x
        return torch.randn(shape, generator=self.generator, device=device, dtype=torch.float32).to(x.device, x.dtype)

    def predict(self, x: torch.Tensor, i: int | torch.Tensor) -> FlowPrediction:
        """Predictions for x (n, ...) at grid point i (an int, or (n,) indices): n calls, in chunks."""
        return self.predict_at(x, self.rs[i])

    def predict_at(self, x: torch.Tensor, r: torch.Tensor) -> FlowPrediction:
        """Predictions for x (n, ...) at interpolant time r (0-d, or (n,) per sample): n calls, in chunks.
        Never exceeds the budget: a strategy that asks for more is a bug, and raises."""
        n = x.shape[0]
        if n > self.remaining:
            raise RuntimeError(f"internal error: {n} calls requested with {self.remaining} left of the budget")
        preds = []
        for start in range(0, n, self.chunk_size):
            xc = x[start:start + self.chunk_size]
            rc = r[start:start + self.chunk_size] if r.ndim == 1 else r
            preds.append(predict(self.denoiser, xc, rc, self._cond(xc.shape[0]), self.interp))
        return FlowPrediction.cat(preds)

    def _cond(self, n: int) -> Cond:
        if n == 1:
            return self.prepared.cond
        if n not in self._conds:
            self._conds[n] = self.denoiser.expand_cond(self.prepared.cond, n)
        return self._conds[n]

    def step(self, x: torch.Tensor, pred: FlowPrediction, i: int, sampler: SDEConfig | None = None) -> torch.Tensor:
        """From grid point i to i + 1 with the cached prediction: 0 calls (noise drawn if the step is random)."""
        sampler = sampler or self.sampler
        stochastic = not sampler.deterministic and float(self.rs[i + 1]) > 0
        noise = self.randn(tuple(x.shape)) if stochastic else None
        return sde_step(x, pred, self.rs[i], self.rs[i + 1], sampler, self.interp, noise)

    # --- reward and trace -----------------------------------------------------------------------------------

    def score(self, x0: torch.Tensor) -> torch.Tensor:
        """Rewards (n,) float32 on CPU of clean latents x0 (n, ...), decoded in chunks when the reward reads
        pixels. Raises ValueError when the reward's output has the wrong shape or is not finite."""
        out = []
        for start in range(0, x0.shape[0], self.chunk_size):
            xc = x0[start:start + self.chunk_size]
            samples = self.decode(xc) if self.reward.reads == "pixels" else xc
            out.append(evaluate(self.reward, samples, [self.prompt] * xc.shape[0]).cpu())
        self.trace.reward_calls += x0.shape[0]
        return torch.cat(out)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels (n, 3, H, W) in [0, 1] through the adapter's decode (output_type "pt")."""
        options = dict(self.prepared.options, output_type="pt", return_dict=False)
        out = self.denoiser.decode(x, replace(self.prepared, x=x, options=options))
        return out[0] if isinstance(out, (tuple, list)) else out

    def record(self, step: int, rewards: torch.Tensor, best: float, extra: dict[str, Any] | None = None) -> None:
        """One trace row: the rewards seen at this step, the best known so far, strategy extras."""
        self.trace.rewards.append(float(best))
        row = {"step": step, "nfe": self.denoiser.nfe - self._start_nfe, "best": float(best),
               "mean": float(rewards.mean())}
        self.trace.steps.append(row | (extra or {}))

    def result(self, samples: torch.Tensor, rewards: torch.Tensor, extra: dict[str, Any] | None = None,
               log_weights: torch.Tensor | None = None) -> SearchResult:
        """Sort samples by reward (best first, stable) and close the trace."""
        order = torch.sort(rewards, descending=True, stable=True).indices
        self.trace.nfe = self.denoiser.nfe - self._start_nfe
        self.trace.seconds = time.perf_counter() - self._start_time
        self.trace.extra.update(extra or {})
        logw = None if log_weights is None else log_weights[order]
        return SearchResult(samples[order.to(samples.device)], rewards[order], self.trace, logw)


# --- config validation helpers (typed configs validate at construction) ------------------------------------------


def check_int(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}")


def check_float(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= high and (
        value > low if low_open else value >= low)
    if not ok:
        lo = f"({low}" if low_open else f"[{low}"
        raise ValueError(f"{name} must be a number in {lo}, {high}], got {value!r}")


def check_sampler(value) -> None:
    if not isinstance(value, SDEConfig):
        raise ValueError(f"sampler must be an SDEConfig (e.g. SDEConfig() or SDEConfig.ode()), got {value!r}")
