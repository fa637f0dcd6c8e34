"""RAISE: requirement-adaptive self-improving evolution, under the same NFE accounting as search.

Jiang et al., "RAISE" (arXiv 2603.00483, CVPR 2026). Each round an analyzer lists the prompt's requirements and
which the current best image misses, a rewriter turns the misses into an adjusted prompt (and, after K_min rounds,
into edits of the best image), a population of candidates is generated, every candidate gets a fitness (the
reward, asked about the *user's* prompt), and the verifier answers the requirement questions about the round's
best candidate only. The global best is kept across rounds; refinement stops after K_min rounds once the global
best is verified, when the analyzer says the rest is minor, after K_max rounds, or when the budget is spent.

Population schedule (the paper's code): rounds <= K_min: `originals` samples of the user's prompt with fresh noise
+ the rest with the adjusted prompt; later rounds: `edits` edits of the global best (a random other planned edit,
the top-1 edit, the comprehensive edit; by default the paper's 3 of 8 scaled to the population) + the rest with the
adjusted prompt.

The edit operator is SDEdit (Meng et al., arXiv 2108.01073) with the same pipeline through the Denoiser contract:
the best image's clean latent is re-noised to sigma = edit_strength (the grid point at or below it) and denoised
under the edit prompt, costing only the remaining steps; or an edit pipeline the user passes (`Editor`, e.g.
FLUX.1 Kontext through `PipelineEditor`), whose own NFE is reported beside the budget.

Accounting. The generator's NFE go through `RaiseContext` (a SearchContext whose conditioning can switch between
prompts), so the budget is enforced as for every strategy and checked against the Denoiser's own count. The trace
adds agent calls, verifier calls, fitness calls and the seconds of each. Deliberate differences from the paper:
no vision tools (captioner, grounding, depth): the shapes verifier sees the image directly; one rewriter call per
round returns both the generation and the edit prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Protocol

import torch

from accel.core.denoiser import Cond, Denoiser, Prepared
from accel.core.reward import Reward
from accel.rewards.base import evaluate
from accel.schedulers.sde import SDEConfig, sde_time_grid
from accel.search.base import SearchContext, SearchTrace, check_int, check_sampler
from accel.search.raise_agents import Agent, Analysis, Rewrite, Verdict


@dataclass(frozen=True)
class RAISEConfig:
    """RAISE's knobs (defaults: the paper's, K_min = 2, K_max = 4, 8 candidates a round).

    population: candidates per round; originals: of them, samples of the user's prompt in rounds <= k_min (the
    rest use the adjusted prompt; None: half, the paper's 4 of 8); edits: edit candidates per round after k_min,
    the rest fresh samples of the adjusted prompt (at most 3 and the population: the top-1 edit, the comprehensive
    edit, a random other planned edit; None: the paper's share, 3 of 8, rounded: 1 of 2, 2 of 4);
    edit_strength: the sigma in (0, 1) the best image is
    re-noised to for an SDEdit edit (higher: freer edits); sampler: the flow ODE by default (as plain sampling);
    verified: the verifier's P(yes) from which a requirement counts as met (0.5: its own yes; higher trusts a
    learned verifier's yes only when it is sure, so that its false yes stops refinement less often).
    """

    name: ClassVar[str] = "raise"
    population: int = 8
    originals: int | None = None
    k_min: int = 2
    k_max: int = 4
    edits: int | None = None
    edit_strength: float = 0.6
    sampler: SDEConfig = SDEConfig.ode()
    verified: float = 0.5

    @property
    def edits_per_round(self) -> int:
        """Edit candidates in a round after k_min (`edits`, or the paper's 3 of 8 scaled to the population)."""
        share = min(3, int(3 * self.population / 8 + 0.5)) if self.edits is None else self.edits
        return min(share, self.population)

    def __post_init__(self):
        check_int("population", self.population)
        check_int("originals", self.originals, minimum=0, optional=True)
        check_int("k_min", self.k_min)
        check_int("k_max", self.k_max)
        check_int("edits", self.edits, minimum=0, optional=True)
        if (self.originals or 0) > self.population or (self.edits or 0) > 3:
            raise ValueError(f"originals ({self.originals}) must be <= population ({self.population}) and edits "
                             f"({self.edits}) <= 3")
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        if not (isinstance(self.edit_strength, (int, float)) and 0.0 < self.edit_strength < 1.0):
            raise ValueError(f"edit_strength must be a number in (0, 1) (the sigma the best image is re-noised to), "
                             f"got {self.edit_strength!r}")
        check_sampler(self.sampler)
        if not (isinstance(self.verified, (int, float)) and 0.0 < self.verified <= 1.0):
            raise ValueError(f"verified must be a probability in (0, 1] (the P(yes) from which a requirement counts "
                             f"as met), got {self.verified!r}")


class Editor(Protocol):
    """An instruction editor: edit(image (3, H, W) in [0, 1], prompt, generator) -> (edited image (3, H, W) in
    [0, 1], NFE it spent)."""

    def edit(self, image: torch.Tensor, prompt: str, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        ...


class PipelineEditor:
    """An edit pipeline the user has (FluxKontextPipeline, QwenImageEditPipeline, ...) as an `Editor`.

    Called as pipe(image=PIL image, prompt=..., generator=..., output_type="pt", **options); its denoiser
    forwards are counted by a forward pre-hook on pipe.transformer (reported in the trace as editor_nfe: they are
    another model's, so they do not draw on the generator's budget).
    """

    def __init__(self, pipe, options: dict[str, Any] | None = None):
        if not callable(pipe) or not hasattr(pipe, "transformer"):
            raise ValueError("PipelineEditor needs a diffusers edit pipeline (callable, with a transformer)")
        self.pipe, self.options = pipe, dict(options or {})

    def edit(self, image, prompt, generator):
        from PIL import Image

        from accel.rewards.base import to_uint8

        count = [0]

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            count[0] += x.shape[0] if isinstance(x, torch.Tensor) else 1

        handle = self.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            pil = Image.fromarray(to_uint8(image[None])[0].numpy())
            out = self.pipe(image=pil, prompt=prompt, generator=generator, output_type="pt", **self.options)
        finally:
            handle.remove()
        images = out.images if hasattr(out, "images") else out[0]
        return images[0].float().clamp(0, 1).cpu(), count[0]


@dataclass
class Candidate:
    """One image of the population: its pixels (3, H, W) in [0, 1], latent (None for an external editor's),
    fitness, and where it came from."""

    image: torch.Tensor
    latent: torch.Tensor | None
    fitness: float
    round: int
    kind: str  # "resample" | "rewrite" | "edit"
    prompt: str
    verdict: Verdict | None = None


@dataclass
class RefineResult:
    """images: (K, 3, H, W) every candidate in [0, 1], best first (ties: the later candidate first, as the paper's
    global best); fitness (K,); latent: the best's clean latent (1, ...) (None when it came from an
    external editor); candidates: their origins, aligned with images; trace: NFE, calls, seconds, rows per round."""

    images: torch.Tensor
    fitness: torch.Tensor
    latent: torch.Tensor | None
    candidates: list[dict]
    trace: SearchTrace

    @property
    def best(self) -> torch.Tensor:
        """The chosen image, (1, 3, H, W) in [0, 1]."""
        return self.images[:1]


class RefineInterrupted(RuntimeError):
    """A refinement stopped by an error or an interrupt after at least one candidate: `result` holds the best so
    far (and the trace to that point); the original exception is the __cause__."""

    def __init__(self, message: str, result: RefineResult):
        super().__init__(message)
        self.result = result


class RaiseContext(SearchContext):
    """A SearchContext whose conditioning can switch between prompts (the adjusted and edit prompts) while the
    budget, the generator, the reward (always asked about the user's prompt) and the trace stay one.

    Args:
        prepare: prompt -> Prepared for one image of that prompt (same call options as the user's).
        Other arguments: SearchContext's (prepared: the user's prompt's).
    """

    def __init__(self, denoiser: Denoiser, prepared: Prepared, prompt: str, reward: Reward, nfe: int,
                 sampler: SDEConfig, generator: torch.Generator | None, prepare: Callable[[str], Prepared],
                 chunk_size: int = 16, callback: Callable[[dict[str, Any]], None] | None = None):
        super().__init__(denoiser, prepared, prompt, reward, nfe, sampler, generator, chunk_size, None, callback)
        self._prepare = prepare
        self._by_prompt: dict[str, Cond] = {prompt: prepared.cond}
        self._active = prepared.cond
        self._expanded: dict[tuple[int, int], Cond] = {}

    def condition_on(self, prompt: str) -> None:
        """Make the following model calls use `prompt`'s conditioning (encoded once per prompt)."""
        if prompt not in self._by_prompt:
            cond = self._prepare(prompt).cond
            if cond.batch != 1 or cond.passes != self.passes:
                raise ValueError(f"the conditioning of {prompt!r} must be one sample with {self.passes} passes")
            self._by_prompt[prompt] = cond
        self._active = self._by_prompt[prompt]

    def _cond(self, n: int) -> Cond:  # SearchContext's hook: the active prompt's conditioning for n samples
        if n == 1:
            return self._active
        key = (id(self._active), n)
        if key not in self._expanded:
            self._expanded[key] = self.denoiser.expand_cond(self._active, n)
        return self._expanded[key]

    def close(self) -> None:
        """Check the Denoiser's own NFE count against the context's and stamp the trace (NFE, seconds)."""
        counted = self.denoiser.nfe - self._start_nfe
        if counted != self.nfe:
            raise RuntimeError(f"internal error: the denoiser counted {counted} NFE, the refinement {self.nfe}")
        self.trace.nfe = counted
        self.trace.seconds = time.perf_counter() - self._start_time


@dataclass
class _Ledger:
    """Calls and seconds outside the generator, kept in the trace."""

    agent_calls: int = 0
    verifier_calls: int = 0
    editor_calls: int = 0
    editor_nfe: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"agent": 0.0, "verifier": 0.0, "fitness": 0.0,
                                                               "generator": 0.0, "editor": 0.0})

    def timed(self, what: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[what] += time.perf_counter() - start


class _Raise:
    """One refinement: the rounds as named phases over a RaiseContext."""

    def __init__(self, ctx: RaiseContext, config: RAISEConfig, agent: Agent, editor: Editor | None):
        self.ctx, self.config, self.agent, self.editor = ctx, config, agent, editor
        self.ledger = _Ledger()
        self.population: list[Candidate] = []
        self.best: Candidate | None = None
        self.round = 0
        # SDEdit starts at the first grid point at or below edit_strength (never the last, sigma = 0).
        rs = ctx.rs.tolist()
        self.edit_start = min(next((i for i, r in enumerate(rs) if r <= config.edit_strength), ctx.steps - 1),
                              ctx.steps - 1)

    # --- phases ---------------------------------------------------------------------------------------------

    def run(self) -> RefineResult:
        cfg, prompt = self.config, self.ctx.prompt
        stop = "rounds"
        for i in range(1, cfg.k_max + 1):
            self.round = i
            cheapest = self._cost("edit" if i > cfg.k_min and cfg.edits_per_round else "resample")
            if self.ctx.remaining < min(cheapest, self.ctx.steps):  # not even one candidate: no agent calls either
                stop = "budget"
                break
            analysis = self._agent("analyze", prompt, self._best_image(), self.best.verdict if self.best else None)
            if i > cfg.k_min and analysis.ending:
                stop = "analyzer"
                break
            rewrite = self._agent("rewrite", prompt, analysis, i > cfg.k_min)
            plan = self._affordable(self._plan(i, rewrite))
            if not plan:
                stop = "budget"
                break
            new = self._generate(i, plan)
            self._keep(new)  # before the verifier: an interrupted round keeps what it paid for
            round_best = max(reversed(new), key=lambda c: c.fitness)  # ties: the later, as the global best
            round_best.verdict = self._verify(round_best, analysis)
            self._record(i, new, analysis)
            if i >= cfg.k_min and self.best.verdict is not None and self.best.verdict.all_satisfied:
                stop = "verified"
                break
        return self._result(stop)

    def _plan(self, i: int, rewrite: Rewrite) -> list[tuple[str, str]]:
        """(kind, prompt) of round i's candidates, the paper's schedule."""
        cfg, prompt = self.config, self.ctx.prompt
        if i <= cfg.k_min or self.best is None:
            originals = cfg.population // 2 if cfg.originals is None else cfg.originals
            return [("resample", prompt)] * originals + [("rewrite", rewrite.prompt)] * (cfg.population - originals)
        edits = rewrite.edits or [rewrite.prompt]
        top, comprehensive, others = edits[0], (edits[1:2] or [rewrite.prompt])[0], edits[2:]
        picked = [top, comprehensive]
        if others:  # one random planned edit other than the top-1 (the paper's third edit)
            k = int(torch.randint(len(others), (1,), generator=self.ctx.generator))
            picked.append(others[k])
        picked = picked[:cfg.edits_per_round]  # fewer edits: the top-1 first, then the comprehensive one
        return [("edit", e) for e in picked] + [("rewrite", rewrite.prompt)] * (cfg.population - len(picked))

    def _cost(self, kind: str) -> int:
        if kind != "edit":
            return self.ctx.steps
        return 0 if self.editor is not None else self.ctx.steps - self.edit_start

    def _affordable(self, plan: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The plan's prefix the remaining budget pays for (the last round may be cut short)."""
        out, left = [], self.ctx.remaining
        for kind, p in plan:
            if self._cost(kind) <= left:
                out.append((kind, p))
                left -= self._cost(kind)
        return out

    def _generate(self, i: int, plan: list[tuple[str, str]]) -> list[Candidate]:
        """The round's candidates, batched per (kind, prompt), with their fitness."""
        groups: dict[tuple[str, str], int] = {}
        for key in plan:
            groups[key] = groups.get(key, 0) + 1
        new = []
        for (kind, p), n in groups.items():
            if kind == "edit" and self.editor is not None:
                images, latents = self._external_edits(p, n), None
            else:
                latents = self.ledger.timed("generator", self._sample, kind, p, n)
                images = self.ledger.timed("generator", self._decode, latents)
            fitness = self.ledger.timed("fitness", self._fitness, images, latents)
            for k in range(n):
                lat = None if latents is None else latents[k:k + 1]
                new.append(Candidate(images[k], lat, float(fitness[k]), i, kind, p))
        return new

    def _sample(self, kind: str, prompt: str, n: int) -> torch.Tensor:
        """n clean latents: fresh noise integrated from the top of the grid, or SDEdit of the best's latent."""
        ctx = self.ctx
        ctx.condition_on(prompt)
        try:
            if kind == "edit":
                start = self.edit_start
                r = ctx.rs[start]
                x0 = self.best.latent.expand(n, *self.best.latent.shape[1:]).to(ctx.prepared.x.device)
                eps = ctx.randn((n, *x0.shape[1:]))
                x = (ctx.interp.alpha(r).to(x0.dtype) * x0 + ctx.interp.sigma(r).to(x0.dtype) * eps).to(x0.dtype)
            else:
                start, x = 0, ctx.noise(n)
            for j in range(start, ctx.steps):
                x = ctx.step(x, ctx.predict(x, j), j)
            return x
        finally:
            ctx.condition_on(ctx.prompt)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (n, 3, H, W) in [0, 1] on CPU, decoded a chunk at a time (a VAE decode is the memory peak)."""
        cs = self.ctx.chunk_size
        return torch.cat([self.ctx.decode(latents[k:k + cs]).float().cpu() for k in range(0, latents.shape[0], cs)])

    def _external_edits(self, prompt: str, n: int) -> torch.Tensor:
        out = []
        for _ in range(n):
            image, nfe = self.ledger.timed("editor", self.editor.edit, self.best.image, prompt, self.ctx.generator)
            self.ledger.editor_calls += 1
            self.ledger.editor_nfe += int(nfe)
            out.append(image)
        return torch.stack(out)

    def _fitness(self, images: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        """The reward of each candidate, asked about the user's prompt (pixels decoded once, used for both)."""
        ctx = self.ctx
        if ctx.reward.reads == "latents":
            if latents is None:
                raise ValueError("an external editor's images have no latents: use a pixel reward with it")
            return ctx.score(latents)
        ctx.trace.reward_calls += images.shape[0]
        return evaluate(ctx.reward, images, [ctx.prompt] * images.shape[0]).cpu()

    def _verify(self, candidate: Candidate, analysis: Analysis) -> Verdict:
        self.ledger.verifier_calls += 1
        verdict = self.ledger.timed("verifier", self.agent.verify, candidate.image, analysis)
        if not isinstance(verdict, Verdict):
            raise ValueError(f"the agent's verify must return a Verdict, got {type(verdict).__name__}")
        th = self.config.verified
        if th != verdict.threshold:  # a stricter (or looser) reading of the verifier's answers than the agent's
            verdict = replace(verdict, threshold=th,
                              all_satisfied=verdict.all_satisfied and all(p >= th for p in verdict.answers))
        return verdict

    def _agent(self, role: str, *args):
        self.ledger.agent_calls += 1
        return self.ledger.timed("agent", getattr(self.agent, role), *args)

    def _keep(self, new: list[Candidate]) -> None:
        """Add the round to the population; the global best is the argmax fitness, ties to the later one."""
        self.population.extend(new)
        for c in new:
            if self.best is None or c.fitness >= self.best.fitness:
                self.best = c
        self.ctx.trace.extra["best_image"] = self.best.image[None]  # an interrupted run keeps it

    def _ranked(self) -> list[Candidate]:
        """The population best first; ties go to the later candidate, as the global best does."""
        order = sorted(range(len(self.population)), key=lambda k: (-self.population[k].fitness, -k))
        return [self.population[k] for k in order]

    def _best_image(self) -> torch.Tensor | None:
        return None if self.best is None else self.best.image

    def _record(self, i: int, new: list[Candidate], analysis: Analysis) -> None:
        fitness = torch.tensor([c.fitness for c in new])
        kinds = {k: sum(c.kind == k for c in new) for k in ("resample", "rewrite", "edit")}
        verdict = max(new, key=lambda c: c.fitness).verdict
        self.ctx.record(i, fitness, self.best.fitness, {
            "round": i, "candidates": len(new), **kinds, "prompts": sorted({c.prompt for c in new}),
            "unsatisfied": [analysis.requirements[k] for k in analysis.unsatisfied if k < len(analysis.requirements)],
            "round_best_verified": bool(verdict and verdict.all_satisfied),
            "agent_calls": self.ledger.agent_calls, "verifier_calls": self.ledger.verifier_calls})

    def _result(self, stop: str) -> RefineResult:
        ctx, ledger = self.ctx, self.ledger
        ctx.close()
        pop = self._ranked()
        best = self.best
        ctx.trace.extra.update({
            "strategy": "raise", "stop": stop, "rounds": max((c.round for c in pop), default=0),
            "agent_calls": ledger.agent_calls, "verifier_calls": ledger.verifier_calls,
            "editor_calls": ledger.editor_calls, "editor_nfe": ledger.editor_nfe,
            "seconds_by_role": {k: round(v, 4) for k, v in ledger.seconds.items()},
            "best_round": best.round if best else None, "best_kind": best.kind if best else None,
            "best_prompt": best.prompt if best else None,
            "best_verified": bool(best and best.verdict and best.verdict.all_satisfied)})
        if not pop:
            raise ValueError("the budget paid for no candidate")
        images = torch.stack([c.image for c in pop])
        cands = [{"round": c.round, "kind": c.kind, "prompt": c.prompt, "fitness": c.fitness} for c in pop]
        return RefineResult(images, torch.tensor([c.fitness for c in pop]), pop[0].latent, cands, ctx.trace)

    def partial(self, error: BaseException) -> RefineResult:
        """The result so far after an error (the trace says what stopped it)."""
        self.ctx.trace.extra["error"] = f"{type(error).__name__}: {error}"
        self.ctx.trace.seconds = time.perf_counter() - self.ctx._start_time
        pop = self._ranked()
        cands = [{"round": c.round, "kind": c.kind, "prompt": c.prompt, "fitness": c.fitness} for c in pop]
        self.ctx.trace.nfe = self.ctx.nfe
        self.ctx.trace.extra.update({"strategy": "raise", "stop": "interrupted",
                                     "agent_calls": self.ledger.agent_calls,
                                     "verifier_calls": self.ledger.verifier_calls})
        return RefineResult(torch.stack([c.image for c in pop]), torch.tensor([c.fitness for c in pop]),
                            pop[0].latent, cands, self.ctx.trace)


def round_cost(config: RAISEConfig, steps: int, passes: int) -> int:
    """NFE of one full first round: population x steps x passes."""
    return config.population * steps * passes


@torch.no_grad()
def refine(denoiser: Denoiser, call: dict[str, Any], reward: Reward, config: str | RAISEConfig | None, nfe: int,
           agent: Agent, editor: Editor | None = None, generator: torch.Generator | None = None,
           chunk_size: int = 16, callback: Callable[[dict], None] | None = None) -> RefineResult:
    """Refine one prompt with RAISE within `nfe` of the generator (counted by the denoiser; never exceeded).

    Args:
        denoiser: the family's adapter (any: the population and the SDEdit edits speak only the Denoiser contract).
        call: the pipeline call for ONE image (prompt a string; steps, guidance, size, ...); every rewritten
            prompt is prepared with the same options.
        reward: the fitness, asked about the user's prompt for every candidate.
        config: "raise", a shortcut with options ("raise:population=4:k_max=3"), or a RAISEConfig (None: defaults).
        nfe: the generator's budget in NFE (CFG counts 2); at least one round (population x steps x passes).
        agent: analyzer, rewriter and verifier (accel.search.raise_agents.ShapesAgent, raise_vlm.VLMAgent).
        editor: an external edit pipeline (PipelineEditor); None: SDEdit with the same pipeline.
        generator: the source of all randomness (noise, edit noise, the pick among planned edits).
    Returns:
        RefineResult: every candidate best first, the best's latent, the trace (NFE, agent / verifier / editor
        calls, seconds by role, one row per round, the stop reason).
    Raises:
        ValueError: a bad config, nfe below one round, an agent that returns the wrong types.
        RefineInterrupted: an error or interrupt after the first candidates; .result holds the best so far.
    """
    from accel.search.registry import get_config

    config = get_config(config or "raise")
    if not isinstance(config, RAISEConfig):
        raise ValueError(f"refine runs RAISE; got the search config {type(config).__name__} (use search() for it)")
    prompt = call.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"refine takes one prompt (a non-empty string), got {prompt!r}")
    for role in ("analyze", "rewrite", "verify"):
        if not callable(getattr(agent, role, None)):
            raise ValueError(f"agent must have analyze, rewrite and verify methods (accel.search.raise_agents.Agent); "
                             f"{type(agent).__name__} has no {role}")

    def prepare(p: str) -> Prepared:
        return denoiser.prepare(**(call | {"prompt": p, "generator": torch.Generator()}))

    prepared = prepare(prompt)
    steps, passes = sde_time_grid(prepared.grid, config.sampler).num_steps, prepared.cond.passes
    first = round_cost(config, steps, passes)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < first:
        raise ValueError(f"nfe={nfe!r} is below one RAISE round: {config.population} candidates x {steps} steps x "
                         f"{passes} NFE = {first} (lower the population, e.g. raise:population=4, or raise nfe)")
    ctx = RaiseContext(denoiser, prepared, prompt, reward, nfe, config.sampler, generator, prepare, chunk_size,
                       callback)
    run = _Raise(ctx, config, agent, editor)
    try:
        return run.run()
    except (Exception, KeyboardInterrupt) as e:
        if not run.population:
            raise
        raise RefineInterrupted(f"RAISE stopped in round {run.round}: {type(e).__name__}: {e}; the best image so "
                                f"far is kept (.result)", run.partial(e)) from e
