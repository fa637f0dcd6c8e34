"""Search strategies on a tiny random shapes model: exact NFE accounting, determinism, plain-sample equivalence,
bad input."""

import pytest
import torch
from conftest import PROMPT, MeanPixel

from accel.schedulers import SDEConfig, sample, sample_sde, sde_time_grid
from accel.search import (STRATEGIES, BeamConfig, BestOfNConfig, EPFConfig, RBFConfig, SearchOverPathsConfig,
                          SMCConfig, SVDDConfig, search)
from accel.search.beam import beam_cost, plan_beam
from accel.search.paths import plan_sop, sop_schedule
from accel.search.rbf import _Chain, plan_rbf
from accel.search.svdd import plan_svdd

T, P = 3, 2  # grid steps, CFG passes: one plain sample costs 6 NFE


def expected_calls(name, calls):
    """The calls each strategy's plan spends, from its own formula (not from running it)."""
    if name in ("bon", "smc", "epf"):
        return calls // T * T
    if name == "svdd":
        b, n = plan_svdd(calls, T, 1, None)
        return b + (T - 1) * b * n
    if name == "rbf":
        return calls  # the final-step rule spends everything left
    if name == "beam":
        b, k, la = plan_beam(calls, T, BeamConfig())
        return b * beam_cost(T, k, la)
    plan = plan_sop(calls, T, SearchOverPathsConfig())
    if plan is None:
        return calls // T * T
    (n, m), (i0, schedule) = plan, sop_schedule(T, SearchOverPathsConfig())
    return n * i0 + n * m * sum(hi - lo for lo, hi in schedule)


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("nfe", [6, 7, 15, 40])
def test_exact_nfe_within_budget(denoiser, prepared, name, nfe):
    before = denoiser.nfe
    res = search(denoiser, prepared, PROMPT, MeanPixel(), name, nfe, torch.Generator().manual_seed(0), chunk_size=4)
    spent = denoiser.nfe - before
    assert res.trace.nfe == spent <= nfe
    assert spent == P * expected_calls(name, nfe // P)
    assert res.samples.shape[1:] == prepared.x.shape[1:] and res.rewards.shape == (res.samples.shape[0],)
    assert torch.all(res.rewards[:-1] >= res.rewards[1:])  # best first
    assert res.trace.rewards and res.trace.seconds > 0


@pytest.mark.parametrize("name", ["sop", "smc", "epf", "svdd", "rbf", "beam"])
def test_deterministic_for_a_seed(denoiser, prepared, name):
    def run(seed, chunk):
        return search(denoiser, prepared, PROMPT, MeanPixel(), name, 30, torch.Generator().manual_seed(seed),
                      chunk_size=chunk)

    a, b, c = run(0, 4), run(0, 4), run(1, 4)
    assert torch.equal(a.samples, b.samples) and a.trace.rewards == b.trace.rewards
    assert not torch.equal(a.samples[0], c.samples[0])


@torch.no_grad()
def test_best_of_one_is_the_plain_pipeline_sample(tiny_pipe, denoiser, prepared):
    res = search(denoiser, prepared, PROMPT, MeanPixel(), "bon", 6, torch.Generator().manual_seed(5))
    ref = tiny_pipe(PROMPT, num_inference_steps=T, generator=torch.Generator().manual_seed(5), output_type="pt")
    torch.testing.assert_close(tiny_pipe.postprocess(res.samples, "pt"), ref.images, atol=1e-6, rtol=0)


@pytest.mark.parametrize("config", [SMCConfig(), EPFConfig(), SVDDConfig(), RBFConfig(), BeamConfig(),
                                    RBFConfig(sampler=SDEConfig(interpolant="linear"))])
@torch.no_grad()
def test_one_sample_budget_is_plain_sde_sampling(denoiser, prepared, config):
    g = torch.Generator().manual_seed(3)
    x = torch.randn((1, *prepared.x.shape[1:]), generator=g)
    grid = sde_time_grid(prepared.grid, config.sampler)
    ref = sample_sde(denoiser, x, grid, prepared.cond, config.sampler, g)
    res = search(denoiser, prepared, PROMPT, MeanPixel(), config, T * P, torch.Generator().manual_seed(3))
    torch.testing.assert_close(res.samples, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_best_of_n_is_n_plain_samples_in_any_chunking(denoiser, prepared):
    a = search(denoiser, prepared, PROMPT, MeanPixel(), "bon", 30, torch.Generator().manual_seed(0), chunk_size=2)
    b = search(denoiser, prepared, PROMPT, MeanPixel(), "bon", 30, torch.Generator().manual_seed(0), chunk_size=16)
    torch.testing.assert_close(a.samples, b.samples, atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    noise = [torch.randn((1, *prepared.x.shape[1:]), generator=g) for _ in range(5)]
    ref = torch.cat([sample(denoiser, x, prepared.grid, prepared.cond) for x in noise])  # (5, 3, 32, 32)
    dist = (a.samples[:, None] - ref[None]).flatten(2).abs().amax(-1)  # (5, 5)
    assert dist.min(1).values.max() < 1e-5 and len(set(dist.argmin(1).tolist())) == 5


def test_expand_cond_shares_one_conditioning(denoiser, prepared, gen):
    x = torch.randn(3, *prepared.x.shape[1:], generator=gen)
    with torch.no_grad():
        v3 = denoiser.velocity(x, torch.tensor(0.6), denoiser.expand_cond(prepared.cond, 3))
        v1 = torch.cat([denoiser.velocity(x[i:i + 1], torch.tensor(0.6), prepared.cond) for i in range(3)])
    torch.testing.assert_close(v3, v1, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one sample"):
        denoiser.expand_cond(denoiser.expand_cond(prepared.cond, 2), 2)


class BadReward:
    reads = "pixels"

    def __init__(self, kind):
        self.kind = kind

    def score(self, samples, prompts):
        if self.kind == "shape":
            return torch.zeros(samples.shape[0] + 1)
        return torch.full((samples.shape[0],), float("nan"))


@pytest.mark.parametrize("kind,match", [("shape", "shape"), ("nan", "non-finite")])
def test_bad_reward_raises(denoiser, prepared, kind, match):
    with pytest.raises(ValueError, match=match):
        search(denoiser, prepared, PROMPT, BadReward(kind), "rbf", 12, torch.Generator().manual_seed(0))


def test_bad_input(denoiser, prepared):
    with pytest.raises(ValueError, match="allowed: bon, sop, smc, epf, svdd, rbf, beam"):
        search(denoiser, prepared, PROMPT, MeanPixel(), "greedy", 12)
    with pytest.raises(ValueError, match="below the cost of one sample: 3 steps x 2 NFE = 6"):
        search(denoiser, prepared, PROMPT, MeanPixel(), "bon", 5)
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        SVDDConfig(particles=0)
    with pytest.raises(ValueError, match="chains must be an integer >= 1"):
        RBFConfig(chains=0)
    with pytest.raises(ValueError, match="allowed: diff, max, rt"):
        SMCConfig(potential="add")
    with pytest.raises(ValueError, match="allowed: ess, entropy, base"):
        EPFConfig(temperature="linear")
    with pytest.raises(ValueError, match="backward"):
        SearchOverPathsConfig(forward=0.3, backward=0.2)
    with pytest.raises(ValueError, match="sampler must be an SDEConfig"):
        BestOfNConfig(sampler="sde")


def test_rollover_rule():
    x, q = torch.zeros(1, 1), 3
    c = _Chain(x, None, best=0.5, budget=q)
    c.offer(x, None, 0.4, q)  # no improvement, quota not spent: stay
    assert (c.level, c.count) == (0, 1)
    c.offer(x + 1, None, 0.7, q)  # beats R*: accept at once, 3 - 2 unspent calls roll over
    assert (c.level, c.budget, c.count, c.best) == (1, q + 1, 0, 0.7)
    for r in (0.1, 0.3, 0.2, 0.0):  # no improvement: forced advance with the step's best after budget = 4
        c.offer(x + r, None, r, q)
    assert (c.level, c.budget, c.best) == (2, q, 0.7) and float(c.x) == pytest.approx(0.3)


def test_rbf_plan_matches_the_paper_defaults():
    # 500 NFE, 10 steps, 2 chains, 25 initial particles: q = floor((500 - 50) / (10 * 2)) = 22 per the paper's
    # T transitions; here the transitions are the grid's steps - 1, so with 11 grid steps the same 22.
    assert plan_rbf(500, 11, 2, 25) == (2, 25, 22)
    assert plan_rbf(500, 11, 2, None) == (2, 25, 22)  # a tenth of the budget over the chains
    assert plan_rbf(11, 11, 2, None) == (1, 1, 1)  # one sample's budget: one plain chain


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_particles_go_through_the_model_in_chunks(tiny_pipe, prepared, name):
    from accel.pipelines.shapes import ShapesDenoiser

    class Recording(ShapesDenoiser):
        batches: list = []

        def _velocity(self, x, sigma, cond):
            self.batches.append(x.shape[0])
            return super()._velocity(x, sigma, cond)

    d = Recording(tiny_pipe)
    search(d, prepared, PROMPT, MeanPixel(), name, 60, torch.Generator().manual_seed(0), chunk_size=3)
    assert max(d.batches) <= 3 and sum(d.batches) * P == d.nfe


@pytest.mark.parametrize("nfe", [6, 13, 40])
@torch.no_grad()
def test_rbf_search_until_spends_exactly_and_integrates_fully(tiny_pipe, prepared, nfe):
    from accel.pipelines.shapes import ShapesDenoiser

    prep = ShapesDenoiser(tiny_pipe).prepare(prompt=PROMPT, num_inference_steps=6,
                                             generator=torch.Generator().manual_seed(0))
    d = ShapesDenoiser(tiny_pipe)
    config = RBFConfig(search_until=0.5)
    res = search(d, prep, PROMPT, MeanPixel(), config, 2 * nfe, torch.Generator().manual_seed(2))
    assert res.trace.nfe == d.nfe == 2 * nfe and res.samples.shape[0] == 1
    assert res.trace.extra["last_searched"] < 5  # the search stopped before the grid's last point
    if nfe == 6:  # one sample's budget: still exactly plain SDE sampling
        g = torch.Generator().manual_seed(2)
        x = torch.randn((1, *prep.x.shape[1:]), generator=g)
        ref = sample_sde(d, x, sde_time_grid(prep.grid, config.sampler), prep.cond, config.sampler, g)
        torch.testing.assert_close(res.samples, ref, atol=1e-5, rtol=1e-5)
