"""Samplers against analytic answers: a 1-D Gaussian data distribution has a closed-form flow."""

import math

import pytest
import torch

from accel.core import Cond, TimeGrid
from accel.core.flow import interpolate, velocity_to_eps, velocity_to_score, velocity_to_x0, x0_to_velocity
from accel.schedulers import euler_step, get_step, heun_step, sample

from toys import GaussianFlow, exact_endpoint


def run(step, n):
    d = GaussianFlow()
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    x = sample(d, x1.clone(), TimeGrid(torch.linspace(1, 0, n + 1, dtype=torch.float64)), Cond(9, 1), step=step)
    return (x - exact_endpoint(x1)).abs().max().item(), d.nfe


@pytest.mark.parametrize("step,order", [(euler_step, 1), (heun_step, 2)])
def test_convergence_order(step, order):
    e1, _ = run(step, 16)
    e2, _ = run(step, 32)
    assert math.log2(e1 / e2) == pytest.approx(order, abs=0.25)


def test_nfe_counts():
    assert run(euler_step, 10)[1] == 9 * 10
    assert run(heun_step, 10)[1] == 9 * (2 * 10 - 1)  # the last step to sigma = 0 is a single evaluation


def test_dirac_data_is_exact_for_euler():
    # For a single data point the velocity field is straight: one Euler step lands on it.
    x0 = torch.tensor([[0.3, -1.2]])

    class Dirac(GaussianFlow):
        def _velocity(self, x, sigma, cond):
            return (x - x0) / sigma

    x = sample(Dirac(), torch.randn(1, 2), TimeGrid.linear(1), Cond(1, 1))
    torch.testing.assert_close(x, x0)


def test_converters_round_trip(gen):
    x0, eps = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    sigma = torch.rand(4, generator=gen) * 0.9 + 0.05
    x = interpolate(x0, eps, sigma)
    v = eps - x0
    torch.testing.assert_close(velocity_to_x0(x, v, sigma), x0)
    torch.testing.assert_close(velocity_to_eps(x, v, sigma), eps)
    torch.testing.assert_close(x0_to_velocity(x, x0, sigma), v)
    torch.testing.assert_close(velocity_to_score(x, v, sigma), -eps / sigma[:, None])


def test_time_grid_validation():
    with pytest.raises(ValueError, match="decreasing"):
        TimeGrid(torch.tensor([0.5, 0.8, 0.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TimeGrid(torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="num_steps"):
        TimeGrid.linear(0)
    assert TimeGrid.shifted(4, 3.0).sigmas[0] == 1.0


def test_unknown_sampler():
    with pytest.raises(ValueError, match="allowed: euler, heun"):
        get_step("dpm")


def test_batch_mismatch_is_an_error():
    with pytest.raises(ValueError, match="batch"):
        GaussianFlow().velocity(torch.zeros(2, 1), torch.tensor(0.5), Cond(3, 1))


class FixedRandomVelocity(GaussianFlow):
    """A deterministic stand-in for a transformer: a fixed random map of (x, sigma), returned in x's dtype."""

    def __init__(self, dim):
        super().__init__()
        self.w = torch.randn(dim, dim, generator=torch.Generator().manual_seed(7)) / dim**0.5

    def _velocity(self, x, sigma, cond):
        return torch.tanh(x.float() @ self.w + sigma).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_is_bit_exact_with_diffusers_scheduler(dtype, shift):
    # The module docstring's claim: the same sigma grid and velocities give the same latents as diffusers'
    # FlowMatchEulerDiscreteScheduler.step, bit for bit, at every step, in the pipelines' latent dtypes.
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(7)
    model = FixedRandomVelocity(16)
    x1 = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    ours = []
    sample(model, x1, TimeGrid(scheduler.sigmas), Cond(3, 1), step=euler_step, callback=lambda i, x: ours.append(x))
    x = x1
    for i, t in enumerate(scheduler.timesteps):
        v = model.velocity(x, scheduler.sigmas[i], Cond(3, 1))
        x = scheduler.step(v, t, x, return_dict=False)[0]
        assert x.dtype == ours[i].dtype == dtype
        assert torch.equal(ours[i], x), f"step {i}: max |diff| {(ours[i].float() - x.float()).abs().max():.3e}"
    assert len(ours) == len(scheduler.timesteps) == 7
