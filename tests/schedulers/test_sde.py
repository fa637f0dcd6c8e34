"""The flow SDE and the VP conversion against exact answers: the ODE step, the paper's closed-form conversion, and
the marginals of a 1-D Gaussian data distribution (whose flow velocity is known in closed form)."""

import pytest
import torch

from accel.core import Cond, TimeGrid
from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline
from accel.schedulers import (LinearInterpolant, SDEConfig, VPInterpolant, euler_step, predict, rbf_time_grid,
                              sample, sample_sde, sde_step, sde_time_grid)
from accel.testing import jitter_

from toys import MU, S, GaussianFlow


@pytest.fixture(scope="module")
def shapes():
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer, seed=1)  # perturb the zero-initialised output conv so velocities are non-trivial
    d = ShapesDenoiser(pipe)
    return d, d.encode(["a photo of a red circle"] * 2, None, 2.0)


@torch.no_grad()
def test_zero_diffusion_is_the_euler_ode(shapes, gen):
    d, cond = shapes
    x = torch.randn(2, 3, 32, 32, generator=gen)
    grid = d.time_grid(6)
    ode = sample(d, x, grid, cond, step=euler_step)
    for config in (SDEConfig.ode(), SDEConfig(interpolant="linear", diffusion="square", diffusion_norm=0.0)):
        sde = sample_sde(d, x, sde_time_grid(grid, config), cond, config, torch.Generator().manual_seed(0))
        assert torch.equal(sde, ode)
    # A single step with g = 0 at any r, from the cached prediction.
    r, r_next = torch.tensor(0.7), torch.tensor(0.55)
    pred = predict(d, x, r, cond, LinearInterpolant())
    step = sde_step(x, pred, r, r_next, SDEConfig.ode(), LinearInterpolant(), None)
    assert torch.equal(step, euler_step(d, x, r, r_next, cond))


@torch.no_grad()
def test_renoise_is_the_few_step_students_rule(shapes, gen):
    # SDEConfig.renoise(): the step re-noises the x0 prediction to r_next with the given noise, as a distilled
    # student samples (accel.schedulers.fewstep.fewstep_update); into r = 0 it returns x0. Not deterministic.
    from accel.schedulers.fewstep import fewstep_update

    d, cond = shapes
    config = SDEConfig.renoise()
    assert not config.deterministic and not SDEConfig(diffusion="renoise", diffusion_norm=0.0).deterministic
    x, eps = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    r, r_next = torch.tensor(0.9375), torch.tensor(0.8333)
    pred = predict(d, x, r, cond, LinearInterpolant())
    step = sde_step(x, pred, r, r_next, config, LinearInterpolant(), eps)
    assert torch.allclose(step, fewstep_update(x, pred.v, r, r_next, "renoise", eps=eps), atol=1e-6)
    assert torch.allclose(step, (1 - r_next) * pred.x0 + r_next * eps, atol=1e-6)
    assert torch.equal(sde_step(x, pred, r, torch.tensor(0.0), config, LinearInterpolant(), None), pred.x0)
    with pytest.raises(ValueError, match="needs noise"):
        sde_step(x, pred, r, r_next, config, LinearInterpolant(), None)


@torch.no_grad()
def test_vp_prediction_matches_linear_at_matched_noise(shapes, gen):
    d, cond = shapes
    vp, lin = VPInterpolant(), LinearInterpolant()
    x0, eps = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    for t in (0.9, 0.5, 0.1):
        x_t = (1 - t) * x0 + t * eps
        r = vp.from_flow_sigma(torch.tensor(t, dtype=torch.float64))
        t_back, s = vp.flow_time(r)
        assert float(t_back) == pytest.approx(t, rel=1e-10)
        x_bar = (s * x_t.double()).float()  # the VP latent at the same signal-to-noise ratio
        torch.testing.assert_close(x_bar.double(), vp.alpha(r) * x0.double() + vp.sigma(r) * eps.double(),
                                   atol=1e-5, rtol=1e-5)
        p_vp = predict(d, x_bar, r.float(), cond, vp)
        p_lin = predict(d, x_t, torch.tensor(t), cond, lin)
        torch.testing.assert_close(p_vp.x0, p_lin.x0, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(p_vp.eps, p_lin.eps, atol=2e-5, rtol=1e-4)


def test_vp_velocity_equals_the_papers_closed_form():
    """v_bar = (s'/s) x + s t' u(x / s, t) with t' and s' from the RBF paper's formulas (linear source)."""
    vp, d = VPInterpolant(), GaussianFlow()
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    for r in (0.95, 0.6, 0.2):
        r = torch.tensor(r, dtype=torch.float64)
        t, s = vp.flow_time(r)
        a, sg, da, dsg = vp.alpha(r), vp.sigma(r), vp.d_alpha(r), vp.d_sigma(r)
        dt = t**2 * (sg * da - a * dsg) / (sg**2 * (t * -1.0 - (1 - t) * 1.0))
        ds = (t * dsg - sg * 1.0 * dt) / t**2
        closed = (ds / s) * x + s * dt * d.velocity(x / s, t, Cond(7, 1))
        torch.testing.assert_close(predict(d, x, r, Cond(7, 1), vp).v, closed, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("config", [
    SDEConfig(interpolant="linear", diffusion="square", diffusion_norm=3.0),
    SDEConfig(interpolant="vp", diffusion="square", diffusion_norm=3.0),
    SDEConfig(interpolant="linear", diffusion="constant", diffusion_norm=1.0),
])
def test_sde_marginal_matches_gaussian_data(config):
    n, steps = 20000, 400
    g = torch.Generator().manual_seed(0)
    interp = VPInterpolant() if config.interpolant == "vp" else LinearInterpolant()
    grid = TimeGrid(torch.linspace(1, 0, steps + 1, dtype=torch.float64))
    # Start from the exact marginal at r = 1 (for VP alpha(1) = 0.0066: nearly, not exactly, noise).
    a1, s1 = interp.alpha(torch.tensor(1.0)), interp.sigma(torch.tensor(1.0))
    x = a1 * MU + torch.sqrt((a1 * S) ** 2 + s1**2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = sample_sde(GaussianFlow(), x, grid, Cond(n, 1), config, g)
    se_mean, se_std = S / n**0.5, S / (2 * n) ** 0.5
    assert abs(out.mean().item() - MU) < 4 * se_mean + 2e-3  # 2e-3: Euler-Maruyama bias at 400 steps
    assert abs(out.std().item() - S) < 4 * se_std + 5e-3
    # The noise really acts: the endpoint is not the deterministic ODE image of the start.
    ode = sample_sde(GaussianFlow(), x, grid, Cond(n, 1), SDEConfig.ode())
    assert (out - ode).abs().mean() > 0.1


def test_grids():
    torch.testing.assert_close(rbf_time_grid(10).sigmas[[1, 5, 9, 10]],
                               torch.tensor([0.995, 0.866, 0.436, 0.0]), atol=1e-3, rtol=0)
    flow = TimeGrid.linear(25)
    assert torch.equal(sde_time_grid(flow, SDEConfig(interpolant="linear")).sigmas, flow.sigmas)
    vp = sde_time_grid(flow, SDEConfig())
    assert vp.num_steps == 25 and float(vp.sigmas[0]) == 1.0
    # Dense grids: flow sigmas beyond VP's reach (t > 0.9935) merge into r = 1.
    assert sde_time_grid(TimeGrid.linear(400), SDEConfig()).num_steps < 400


def test_config_validation():
    with pytest.raises(ValueError, match="allowed: linear, vp"):
        SDEConfig(interpolant="cosine")
    with pytest.raises(ValueError, match="allowed: square, linear, constant, sigma, zero, renoise"):
        SDEConfig(diffusion="tan")
    with pytest.raises(ValueError, match="diffusion_norm"):
        SDEConfig(diffusion_norm=-1.0)
    with pytest.raises(ValueError, match="allowed: pipeline, rbf"):
        SDEConfig(grid="exp")
