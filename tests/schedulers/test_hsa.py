"""Heterogeneous step allocation: the sampler core (plan, cached Euler update, exactness with every token active)."""

import pytest
import torch

from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline
from accel.schedulers.flow import euler_update, sample
from accel.schedulers.hsa import HSAConfig, hsa_sample, latent_to_tokens, plan_hsa, tokens_to_latent


@pytest.fixture(scope="module")
def setup():
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = ShapesDenoiser(pipe)
    with torch.no_grad():
        prepared = d.prepare(prompt=["a photo of a red circle", "a photo of two squares"], num_inference_steps=8,
                             generator=torch.Generator().manual_seed(0))
    return d, prepared


def test_every_token_active_is_plain_euler(setup):
    d, prepared = setup
    with torch.no_grad():
        ref = sample(d, prepared.x, prepared.grid, prepared.cond)
        out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=1.0))
    assert torch.equal(out, ref)
    assert stats.token_fraction == 1.0


def test_partial_steps_spend_the_budget_and_end_at_zero(setup):
    d, prepared = setup
    n = d.token_layout(prepared.x).num_tokens
    for runtime in (0.5, 0.35):
        config = HSAConfig(runtime=runtime)
        with torch.no_grad():
            out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, config)
        assert stats.active[0] == n and stats.active[-1] == n  # warm-up and final steps are full
        assert stats.token_fraction <= runtime + 1e-9 and stats.token_fraction > runtime - 2 / 8
        assert torch.isfinite(out).all() and out.shape == prepared.x.shape


def test_cached_update_equals_stepwise_euler_for_constant_velocity():
    x, v = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    sigmas = torch.tensor([0.9, 0.7, 0.55, 0.3])
    stepwise = x
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        stepwise = euler_update(stepwise, v, s, s_next)
    jump = x + (sigmas[-1] - sigmas[0]) * v
    assert torch.allclose(stepwise, jump, atol=1e-6)


def test_starvation_is_bounded(setup):
    """No token is skipped more than max_skips steps in a row when the active slots can take the starved ones."""
    d, prepared = setup
    seen = []

    def spy(x, sigma, active):
        seen.append(active.clone())
        v = latent_to_tokens(d.velocity(x, sigma, prepared.cond), 8, 8)
        return torch.gather(v, 1, active[..., None].expand(-1, -1, v.shape[-1]))

    with torch.no_grad():
        hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.8, max_skips=2), spy)
    assert any(a.shape[1] < 64 for a in seen)
    for row in range(2):
        run = torch.zeros(64, dtype=torch.long)
        for a in seen:
            hit = torch.zeros(64, dtype=torch.bool)
            hit[a[row]] = True
            run = torch.where(hit, 0, run + 1)
            assert int(run.max()) <= 2


def test_token_round_trip():
    for shape, grid in [((2, 3, 32, 32), (1, 8, 8)), ((1, 4, 6, 8, 8), (3, 4, 4)), ((2, 10, 7), (1, 1, 10))]:
        x = torch.randn(shape)
        t = latent_to_tokens(x, grid[1], grid[2], grid[0])
        assert t.shape[:2] == (shape[0], grid[0] * grid[1] * grid[2]) or x.ndim == 3
        assert torch.equal(tokens_to_latent(t, x, grid[1], grid[2], grid[0]), x)


def test_plan_and_bad_config():
    assert plan_hsa(10, 64, HSAConfig(runtime=1.0)) == [64] * 10
    plan = plan_hsa(20, 64, HSAConfig(runtime=0.5, warmup=2))
    assert plan[:2] == [64, 64] and plan[-1] == 64 and sum(plan) <= 0.5 * 20 * 64
    with pytest.raises(ValueError, match="cannot carry"):
        plan_hsa(10, 64, HSAConfig(runtime=0.1, warmup=3))
    assert plan_hsa(20, 64, HSAConfig(runtime=10)) == plan_hsa(20, 64, HSAConfig(runtime=0.5))  # a step budget
    with pytest.raises(ValueError, match="exceeds"):
        plan_hsa(10, 64, HSAConfig(runtime=12))
    for bad in ({"runtime": 0}, {"runtime": 1.5}, {"runtime": True}, {"runtime": "half"}, {"warmup": 0},
                {"max_skips": 0}, {"score": "entropy"}):
        with pytest.raises(ValueError):
            HSAConfig(**bad)
