"""Strategy options from the papers: DLBS's search_range, ePF's lookahead, SVDD's soft value rule."""

import pytest
import torch

from accel.search import BeamConfig, EPFConfig, SVDDConfig, search
from accel.search.base import SearchContext
from accel.search.beam import beam_cost, branching, plan_beam
from accel.search.smc import lookahead_steps

from conftest import PROMPT, MeanPixel


@pytest.fixture(scope="module")
def prepared6(denoiser):
    with torch.no_grad():
        return denoiser.prepare(prompt=PROMPT, num_inference_steps=6, generator=torch.Generator().manual_seed(0))


def run(denoiser, prepared, config, nfe, seed=3):
    start = denoiser.nfe
    result = search(denoiser, prepared, PROMPT, MeanPixel(), config, nfe, torch.Generator().manual_seed(seed))
    assert denoiser.nfe - start == result.trace.nfe <= nfe
    return result


def test_beam_search_range_branches_only_inside(denoiser, prepared6):
    config = BeamConfig(search_range=(0.8, 0.3))
    ctx = SearchContext(denoiser, prepared6, PROMPT, MeanPixel(), 400, config.sampler, None)
    searched = branching(ctx, config.search_range)
    assert 0 < sum(searched) < len(searched)  # some transitions branch, some do not
    result = run(denoiser, prepared6, config, 400)
    b, k, la = plan_beam(200, 6, config, searched)
    assert result.trace.nfe == 2 * b * beam_cost(6, k, la, searched)
    assert result.trace.extra["branching_steps"] == sum(searched)
    assert len(result.trace.steps) == sum(searched) + (not searched[-1])


def test_beam_full_range_is_the_default(denoiser, prepared6):
    a = run(denoiser, prepared6, BeamConfig(), 300)
    b = run(denoiser, prepared6, BeamConfig(search_range=(1.0, 0.0)), 300)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.rewards, b.rewards)


@pytest.mark.parametrize("bad", [(0.2, 0.5), (1.5, 0.0), (0.5,), "all", (True, 0.0)])
def test_beam_search_range_bad(bad):
    with pytest.raises(ValueError, match="search_range"):
        BeamConfig(search_range=bad)


def test_epf_lookahead_spends_its_plan(denoiser, prepared6):
    plain = run(denoiser, prepared6, EPFConfig(), 240)
    assert plain.trace.extra["lookahead_steps"] == 0 and plain.trace.extra["particles"] == 20
    ahead = lookahead_steps(6, 3, 0.5)
    assert ahead == [True, True, True, False, False, False]
    result = run(denoiser, prepared6, EPFConfig(lookahead=3), 240)
    k = 120 // (6 + 2 * 3)
    assert result.trace.extra["particles"] == k and result.trace.extra["lookahead_steps"] == 3
    assert result.trace.nfe == 2 * k * (6 + 2 * 3)
    # Too small a budget for one particle with lookahead: plain ePF, not an error.
    small = run(denoiser, prepared6, EPFConfig(lookahead=4), 14)
    assert small.trace.extra["lookahead_steps"] == 0 and small.trace.nfe == 12


def test_svdd_soft_value(denoiser, prepared6):
    greedy = run(denoiser, prepared6, SVDDConfig(), 200)
    assert torch.equal(greedy.samples, run(denoiser, prepared6, SVDDConfig(alpha=0.0), 200).samples)
    soft = run(denoiser, prepared6, SVDDConfig(alpha=0.05), 200)
    again = run(denoiser, prepared6, SVDDConfig(alpha=0.05), 200)
    assert torch.equal(soft.samples, again.samples)  # seeded
    assert soft.trace.nfe == greedy.trace.nfe
    with pytest.raises(ValueError, match="alpha"):
        SVDDConfig(alpha=-1.0)
