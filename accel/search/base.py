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
from typing import Any, Callable

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


class Shards:
    """The processes of a torch.distributed group that share one search (scale-out over particles).

    Every process runs the same strategy on the same prompt with the same seed, so all of them draw the same noise
    and take the same decisions; only the expensive work is split. The particles of each model call and each reward
    call are cut into the same chunks a single process would use, process `rank` computes chunks rank, rank + world,
    ..., and the results are summed across processes (each entry is computed by exactly one process, the others
    contribute zeros, so the sum is exact). Hence a fixed seed gives the same result as one process, as long as a
    chunk's numerics do not depend on the process (same device type, dtype and thread count).

    Args:
        group: a torch.distributed process group (None: the default group, which must be initialised, e.g. by
            torchrun, `accelerate launch` or accelerate.PartialState()).
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed search needs an initialised torch.distributed process group (launch with "
                             "torchrun or accelerate launch, and create accelerate.PartialState() first)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def mine(self, n_chunks: int) -> range:
        """The chunk indices this process computes."""
        return range(self.rank, n_chunks, self.world)

    def gather(self, parts: dict[int, torch.Tensor], sizes: list[int], like: torch.Tensor | None) -> torch.Tensor:
        """Concatenate chunk results (chunk index -> tensor of sizes[index] rows) computed across the processes.
        `like` gives the trailing shape, dtype and device when this process computed no chunk (None: ask peers)."""

        ref = next(iter(parts.values()), like)
        if ref is None:
            raise RuntimeError("internal error: a process without chunks needs a reference tensor")
        out = torch.zeros((sum(sizes), *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        for k, t in parts.items():
            out[offsets[k]:offsets[k + 1]] = t
        return self._all_reduce(out)

    def total(self, value: int) -> int:
        """The sum of an integer over the processes."""
        return int(self._all_reduce(torch.tensor([value], dtype=torch.float64)).item())

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum across processes on the backend's device (NCCL: this process's GPU; gloo: the CPU), returned on t's
        device."""
        import torch.distributed as dist

        comm = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl"
                else torch.device("cpu"))
        buf = t.to(comm)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return buf.to(t.device)


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
        shards: spread the chunks over processes (see Shards); None: this process does everything.
        callback: called with each trace row (plus "budget"), e.g. for a progress bar.
    """

    def __init__(self, denoiser: Denoiser, prepared: Prepared, prompt: str, reward: Reward, nfe: int,
                 sampler: SDEConfig, generator: torch.Generator | None, chunk_size: int = 16,
                 shards: Shards | None = None, callback: Callable[[dict[str, Any]], None] | None = None):
        if prepared.cond.batch != 1:
            raise ValueError(f"search runs one prompt at a time: prepared.cond.batch must be 1, got "
                             f"{prepared.cond.batch}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if reward.reads not in ("pixels", "latents"):
            raise ValueError(f"reward.reads must be 'pixels' or 'latents', got {reward.reads!r}")
        self.denoiser, self.prepared, self.prompt, self.reward = denoiser, prepared, prompt, reward
        self.sampler, self.generator, self.chunk_size = sampler, generator, chunk_size
        self.shards, self.callback = shards, callback
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
        self._calls = 0  # calls of this search, over all processes (every process runs the same plan)
        self._start_nfe = denoiser.nfe
        self._start_time = time.perf_counter()

    # --- budget ---------------------------------------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Calls spent so far (over all processes)."""
        return self._calls

    @property
    def width(self) -> int:
        """Samples computed at once over all processes: one chunk per process."""
        return self.chunk_size * (self.shards.world if self.shards is not None else 1)

    @property
    def nfe(self) -> int:
        """NFE spent so far (over all processes)."""
        return self._calls * self.passes

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
        self._calls += n

        def call(xc: torch.Tensor, rc: torch.Tensor | None) -> torch.Tensor:
            p = predict(self.denoiser, xc, r if rc is None else rc, self._cond(xc.shape[0]), self.interp)
            return torch.stack([p.x0, p.eps, p.v])

        out = self._map(x, call, r if r.ndim == 1 else None, like=lambda k: torch.stack([x[:k]] * 3), dim=1)
        return FlowPrediction(out[0], out[1], out[2])

    def _map(self, x: torch.Tensor, fn, per_sample: torch.Tensor | None, like, dim: int = 0) -> torch.Tensor:
        """fn over chunks of x (and of the per-sample tensor, if any), concatenated along `dim`; with shards, each
        process computes its own chunks and the results are combined exactly (see Shards)."""
        starts = list(range(0, x.shape[0], self.chunk_size))
        chunk = [(x[s:s + self.chunk_size], per_sample[s:s + self.chunk_size] if per_sample is not None else None)
                 for s in starts]
        if self.shards is None or self.shards.world == 1:
            return torch.cat([fn(xc, rc) for xc, rc in chunk], dim=dim)
        parts = {k: fn(*chunk[k]).movedim(dim, 0) for k in self.shards.mine(len(chunk))}
        sizes = [c[0].shape[0] for c in chunk]
        reference = None if parts else like(sizes[0]).movedim(dim, 0)
        return self.shards.gather(parts, sizes, reference).movedim(0, dim)

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
        def call(xc: torch.Tensor, _rc) -> torch.Tensor:
            samples = self.decode(xc) if self.reward.reads == "pixels" else xc
            return evaluate(self.reward, samples, [self.prompt] * xc.shape[0]).cpu()

        out = self._map(x0, call, None, like=lambda k: torch.zeros(k))
        self.trace.reward_calls += x0.shape[0]
        return out

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels (n, 3, H, W) in [0, 1] through the adapter's decode (output_type "pt")."""
        options = dict(self.prepared.options, output_type="pt", return_dict=False)
        out = self.denoiser.decode(x, replace(self.prepared, x=x, options=options))
        return out[0] if isinstance(out, (tuple, list)) else out

    def record(self, step: int, rewards: torch.Tensor, best: float, extra: dict[str, Any] | None = None) -> None:
        """One trace row: the rewards seen at this step, the best known so far, strategy extras."""
        self.trace.rewards.append(float(best))
        row = {"step": step, "nfe": self.nfe, "best": float(best), "mean": float(rewards.mean())}
        self.trace.steps.append(row | (extra or {}))
        if self.callback is not None:
            self.callback(row | {"budget": self.budget})

    def result(self, samples: torch.Tensor, rewards: torch.Tensor, extra: dict[str, Any] | None = None,
               log_weights: torch.Tensor | None = None) -> SearchResult:
        """Sort samples by reward (best first, stable) and close the trace."""
        order = torch.sort(rewards, descending=True, stable=True).indices
        counted = self.denoiser.nfe - self._start_nfe  # the Denoiser's own count: the meter of record
        if self.shards is not None and self.shards.world > 1:
            counted = self.shards.total(counted)
        if counted != self.nfe:
            raise RuntimeError(f"internal error: the denoiser counted {counted} NFE, the search {self.nfe}")
        self.trace.nfe = counted
        self.trace.seconds = time.perf_counter() - self._start_time
        self.trace.extra.update(extra or {})
        if self.budget - counted >= self.passes:
            self.trace.extra.setdefault(
                "unspent", f"stopped at {counted} of {self.budget} NFE: the strategy plans whole units (samples, "
                           f"particles or path branches) and one more would exceed the budget")
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
