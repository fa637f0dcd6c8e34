"""Weights and resampling against exact answers, and SMC on a 1-D Gaussian whose reward-tilted target is known."""

import math

import pytest
import torch

from accel.core import Cond, Prepared, TimeGrid
from accel.schedulers import SDEConfig
from accel.search import SMCConfig, search
from accel.search.resampling import entropic_temperature, ess, normalize, normalized_entropy, resample

from toys import MU, S, GaussianFlow


def test_ess_and_entropy():
    assert ess(torch.zeros(8)) == pytest.approx(8)
    assert ess(torch.tensor([0.0, -1e4, -1e4, -1e4])) == pytest.approx(1)
    assert ess(torch.log(torch.tensor([0.5, 0.5, 0.0, 0.0]))) == pytest.approx(2)
    assert normalized_entropy(normalize(torch.zeros(5))) == pytest.approx(1)
    # Large log-weights (lam * reward with lam = 1e4) normalise without overflow.
    assert torch.isfinite(normalize(torch.tensor([1e4, 1e4 - 1.0]))).all()


def test_systematic_counts_are_floor_or_ceil(gen):
    p = torch.tensor([0.05, 0.3, 0.15, 0.5])
    for _ in range(20):
        idx = resample(p, 10, "systematic", gen)
        counts = torch.bincount(idx, minlength=4).double()
        assert torch.all(counts >= torch.floor(10 * p.double())) and torch.all(counts <= torch.ceil(10 * p.double()))


def test_multinomial_frequencies(gen):
    p = torch.tensor([0.1, 0.6, 0.3])
    idx = resample(p, 20000, "multinomial", gen)
    freq = torch.bincount(idx, minlength=3).double() / 20000
    assert torch.allclose(freq, p.double(), atol=0.015)  # 4.5 standard errors
    with pytest.raises(ValueError, match="allowed: multinomial, systematic"):
        resample(p, 3, "residual", gen)


def test_entropic_temperature_rules():
    collapsed = torch.tensor([0.0, -10.0, -10.0, -10.0])  # ESS ~ 1 of 4
    e = ess(collapsed)
    assert entropic_temperature(collapsed, 0.2, "ess", 0.5, 0.5, 2.0) == pytest.approx(4 / e * 0.8)
    assert entropic_temperature(collapsed, 0.6, "ess", 0.5, 0.5, 2.0) == 1.0  # late: no annealing
    assert entropic_temperature(torch.zeros(4), 0.1, "ess", 0.5, 0.5, 2.0) == 1.0  # healthy weights
    assert entropic_temperature(collapsed, 0.25, "base", 0.5, 0.5, 2.0) == pytest.approx(1.75)
    h = normalized_entropy(normalize(collapsed))
    assert entropic_temperature(collapsed, 0.25, "entropy", 0.5, 0.5, 2.0) == pytest.approx(1 / (h + (1 - h) * 0.25))


class Position:
    reads = "latents"

    def score(self, samples, prompts):
        return samples[:, 0].float()


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_smc_targets_the_reward_tilted_distribution(threshold):
    """With the "diff" potential the SMC target is p(x0) exp(lam r(x0)); for r = x0 and Gaussian data that is
    N(MU + lam S^2, S^2). The weighted final particles must match its mean and spread, whatever resampling fired."""
    lam, steps, k = 2.0, 40, 4000  # ESS of exp(lam x0) weights: exp(-(lam S)^2) K = 0.37 K
    prepared = Prepared(torch.zeros(1, 1, dtype=torch.float64), Cond(1, 1),
                        TimeGrid(torch.linspace(1, 0, steps + 1, dtype=torch.float64)))
    config = SMCConfig(lam=lam, ess_threshold=threshold, sampler=SDEConfig(interpolant="linear"))
    res = search(GaussianFlow(), prepared, "", Position(), config, k * steps, torch.Generator().manual_seed(0),
                 chunk_size=4000)
    assert res.trace.extra["resampled"] > 0
    w = normalize(res.log_weights)
    x = res.samples[:, 0].double()
    mean = float((w * x).sum())
    std = math.sqrt(float((w * (x - mean) ** 2).sum()))
    assert mean == pytest.approx(MU + lam * S**2, abs=0.04)
    assert std == pytest.approx(S, abs=0.04)


@pytest.mark.parametrize("interpolant", ["linear", "vp"])
def test_search_over_paths_renoise_is_the_exact_forward_kernel(interpolant):
    from accel.search.base import SearchContext
    from accel.search.paths import renoise

    n = 40000
    prepared = Prepared(torch.zeros(1, 1, dtype=torch.float64), Cond(1, 1),
                        TimeGrid(torch.linspace(1, 0, 11, dtype=torch.float64)))
    ctx = SearchContext(GaussianFlow(), prepared, "", Position(), 10, SDEConfig(interpolant=interpolant),
                        torch.Generator().manual_seed(0))
    interp, g = ctx.interp, torch.Generator().manual_seed(1)
    rc, rf = ctx.rs[7], ctx.rs[4]
    x0 = MU + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_c = interp.alpha(rc) * x0 + interp.sigma(rc) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_f = renoise(ctx, x_c, 7, 4)
    mean, std = interp.alpha(rf) * MU, torch.sqrt((interp.alpha(rf) * S) ** 2 + interp.sigma(rf) ** 2)
    assert float(x_f.mean()) == pytest.approx(float(mean), abs=4 * float(std) / n**0.5)
    assert float(x_f.std()) == pytest.approx(float(std), rel=0.02)
