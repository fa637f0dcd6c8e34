"""The strategies by name, and `search`: run one strategy on one prompt under an NFE budget."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Union

import torch

from accel.core.denoiser import Denoiser, Prepared
from accel.core.reward import Reward
from accel.schedulers.sde import SDEConfig
from accel.search.base import SearchContext, SearchResult, Shards
from accel.search.beam import BeamConfig, run_beam
from accel.search.bon import BestOfNConfig, run_best_of_n
from accel.search.paths import SearchOverPathsConfig, run_search_over_paths
from accel.search.raise_ import RAISEConfig
from accel.search.rbf import RBFConfig, run_rbf
from accel.search.smc import EPFConfig, SMCConfig, run_epf, run_smc
from accel.search.svdd import SVDDConfig, run_svdd

SearchConfig = Union[BestOfNConfig, SearchOverPathsConfig, SMCConfig, EPFConfig, SVDDConfig, RBFConfig, BeamConfig,
                     RAISEConfig]

STRATEGIES: dict[str, tuple[type, Callable[[SearchContext, SearchConfig], SearchResult]]] = {
    "bon": (BestOfNConfig, run_best_of_n),
    "sop": (SearchOverPathsConfig, run_search_over_paths),
    "smc": (SMCConfig, run_smc),
    "epf": (EPFConfig, run_epf),
    "svdd": (SVDDConfig, run_svdd),
    "rbf": (RBFConfig, run_rbf),
    "beam": (BeamConfig, run_beam),
}

# Shortcut options that set the strategy's SDEConfig sampler rather than the strategy's own config.
SAMPLER_OPTIONS = frozenset(f.name for f in fields(SDEConfig))

# Refiners rewrite the prompt between rounds, so they need the pipeline call, an agent and maybe an editor: they run
# through accel.search.raise_.refine (pipe(..., refine=...)), not search(). Their shortcuts parse like the strategies'.
REFINERS: dict[str, type] = {"raise": RAISEConfig}


def get_config(strategy: str | SearchConfig) -> SearchConfig:
    """A strategy's config from its shortcut, or the config itself.

    A shortcut is a name (its defaults) optionally followed by `:key=value` overrides, each a field of the
    strategy's config or of its SDEConfig sampler: "rbf:chains=8", "smc:interpolant=linear",
    "epf:particles=8:diffusion_norm=1.5". Values are parsed as int, float, bool or string.
    """
    classes = {name: entry[0] for name, entry in STRATEGIES.items()} | REFINERS
    if isinstance(strategy, str):
        name, *overrides = strategy.split(":")
        if name not in classes:
            raise ValueError(f"unknown search strategy {name!r}; allowed: {', '.join(classes)}")
        cls = classes[name]
        return _override(cls(), overrides) if overrides else cls()
    if isinstance(strategy, tuple(classes.values())):
        return strategy
    raise ValueError(f"unknown search config {type(strategy).__name__}; allowed: a name ({', '.join(classes)}) "
                     f"or one of {', '.join(c.__name__ for c in classes.values())}")


def for_student(strategy: str | SearchConfig, rule: str) -> str | SearchConfig:
    """The strategy as it runs on a distilled student whose update rule is `rule` (accel.schedulers.fewstep).

    A shortcut without sampler options whose sampler is the flow ODE (best-of-N, search over paths) draws each
    sample the way the student samples: with rule "renoise", SDEConfig.renoise() (x0 re-noised with fresh noise at
    each grid point), so best-of-N picks among the student's own samples. Anything else runs as given: a typed
    config, a shortcut with sampler options ("bon:diffusion=zero" keeps the ODE), an SDE strategy, an Euler-rule
    student.
    """
    if rule != "renoise" or not isinstance(strategy, str):
        return strategy
    config = get_config(strategy)
    options = {item.partition("=")[0] for item in strategy.split(":")[1:]}
    if not hasattr(config, "sampler") or not config.sampler.deterministic or SAMPLER_OPTIONS & options:
        return strategy
    return replace(config, sampler=replace(SDEConfig.renoise(), interpolant=config.sampler.interpolant))


def _parse_value(text: str):
    if text in ("true", "True", "false", "False"):
        return text in ("true", "True")
    if text in ("none", "None"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _override(config: SearchConfig, overrides: list[str]) -> SearchConfig:
    """config with "key=value" overrides applied (config fields first, then its sampler's)."""
    own = {f.name for f in fields(config)} - {"sampler"}
    changes, sampler_changes = {}, {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"search option {item!r} must look like key=value (e.g. {config.name}:chains=8)")
        if key in own:
            changes[key] = _parse_value(value)
        elif key in SAMPLER_OPTIONS:
            sampler_changes[key] = _parse_value(value)
        else:
            raise ValueError(f"unknown option {key!r} for {config.name}; allowed: "
                             f"{', '.join(sorted(own | SAMPLER_OPTIONS))}")
    if sampler_changes:
        changes["sampler"] = replace(config.sampler, **sampler_changes)
    return replace(config, **changes)


@torch.no_grad()
def search(denoiser: Denoiser, prepared: Prepared, prompt: str, reward: Reward, strategy: str | SearchConfig,
           nfe: int, generator: torch.Generator | None = None, chunk_size: int = 16, distributed=False,
           callback: Callable[[dict], None] | None = None) -> SearchResult:
    """Run one search strategy for one prompt within `nfe` (counted by the denoiser; never exceeded).

    Args:
        denoiser: the family's adapter (it needs expand_cond for more than one particle).
        prepared: denoiser.prepare(...) for ONE image of the prompt: its grid and conditioning are used; the
            particles draw their own start noise from `generator` (one sample at a time, so particle 0 is the
            noise a pipeline call with a fresh generator of the same seed would use).
        prompt: the prompt text, for the reward.
        reward: a Reward; "pixels" rewards see decoded (B, 3, H, W) images in [0, 1].
        strategy: a shortcut (bon, sop, smc, epf, svdd, rbf, beam) or its typed config.
        nfe: the budget in NFE (CFG counts 2); at least one plain sample's cost.
        generator: the source of all randomness (a CPU generator: the same draws on any device).
        chunk_size: particles per model call (memory: never all particles' activations at once).
        distributed: spread the particles' chunks over the processes of torch.distributed's default group (True)
            or of the given process group; every process must make the same call with the same seed, and all get
            the same result, equal to a single process's (see accel.search.Shards). False: this process alone.
        callback: called with each trace row {"step", "nfe", "best", "mean", "budget", ...} (a progress bar).
    Returns:
        SearchResult: final latents (K, ...) best first (decode with denoiser.decode), rewards, trace.
    Raises:
        ValueError: unknown strategy, budget below one sample, a reward output of the wrong shape or not finite.
    """
    config = get_config(strategy)
    if isinstance(config, tuple(REFINERS.values())):
        raise ValueError(f"{config.name} rewrites the prompt between rounds: run it with pipe(prompt, "
                         f"refine={config.name!r}, ...) or accel.search.raise_.refine(...), not search()")
    shards = None
    if distributed is not False and distributed is not None:
        shards = Shards(None if distributed is True else distributed)
    ctx = SearchContext(denoiser, prepared, prompt, reward, nfe, config.sampler, generator, chunk_size, shards,
                        callback)
    return STRATEGIES[config.name][1](ctx, config)
