"""The distillation losses and Salt's timestep rules against hand computations."""

import random

import pytest
import torch

from accel.distill.config import DistillConfig
from accel.distill.grids import dmd_sigmas, sc_times, to_sigma
from accel.distill.losses import critic_loss, dmd_direction, dmd_loss, ode_loss, sc_endpoints, sc_loss

TRAIN8 = (1000, 875, 750, 625, 500, 375, 250, 125)
BOUNDARIES = (1000, 750, 500, 250, 0)


def test_dmd_direction_uses_the_per_sample_mean_abs_normaliser():
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    real = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # sample 1: x == real, normaliser 0
    fake = torch.tensor([[2.0, -2.0], [5.0, 1.0]])
    delta = dmd_direction(x, real, fake)
    # sample 0: mean|x - real| = (1 + 3) / 2 = 2, so Delta = (fake - real) / 2; sample 1: 0/0 -> NaN -> 0
    assert delta.dtype == torch.float64
    assert torch.equal(delta, torch.tensor([[1.0, -1.0], [0.0, 0.0]], dtype=torch.float64))


def test_dmd_loss_gradient_is_delta_over_numel():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, requires_grad=True)
    real, fake = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    loss = dmd_loss(x, real, fake)
    loss.backward()
    delta = dmd_direction(x.detach(), real, fake)
    assert torch.allclose(x.grad.double(), delta / x.numel(), atol=1e-12)
    assert torch.isclose(loss, 0.5 * (delta ** 2).mean())


def test_critic_and_ode_losses():
    x0, eps = torch.ones(2, 3), torch.zeros(2, 3)
    assert critic_loss(torch.full((2, 3), -1.0), x0, eps) == 0  # v = eps - x0
    assert critic_loss(torch.zeros(2, 3), x0, eps) == 1
    x, v = torch.full((1, 4), 2.0), torch.full((1, 4), 1.0)
    assert ode_loss(x, v, 0.5, torch.full((1, 4), 1.5)) == 0  # x0 = x - sigma v = 1.5
    assert ode_loss(x, v, torch.tensor([0.5]), torch.full((1, 4), 0.5)) == 1


def test_sc_endpoints_on_a_linear_field():
    # v(x) = a x: direct x_e1 = (1 - (s_s - s_e) a) x_s; composed (1 - A a)(1 - B a) x_s with A = s_m - s_e,
    # B = s_s - s_m, so x_e2 - x_e1 = A B a^2 x_s.
    a, s_s, s_m, s_e = 0.7, 0.9, 0.5, 0.2
    x_s = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    v1 = (a * x_s).requires_grad_(True)
    calls = []

    def velocity(x, sigma):
        calls.append(sigma)
        return a * x

    x_e1, x_e2 = sc_endpoints(x_s, v1, s_s, s_m, s_e, velocity)
    assert calls == [s_m] and not x_e2.requires_grad and x_e1.requires_grad
    assert torch.allclose(x_e1, (1 - (s_s - s_e) * a) * x_s)
    A, B = s_m - s_e, s_s - s_m
    assert torch.allclose(x_e2 - x_e1, A * B * a * a * x_s, atol=1e-6)
    loss = sc_loss(x_e1, x_e2, s_s)
    expected = (1 - s_s) * ((A * B * a * a * x_s) ** 2).mean(1).mean()
    assert torch.isclose(loss, expected, atol=1e-7)
    loss.backward()
    assert v1.grad is not None and v1.grad.abs().sum() > 0


def test_sc_on_a_constant_field_is_zero_and_t_m_equal_t_e_skips_the_second_call():
    # Straight lines: the direct and composed maps agree exactly.
    x_s, v1 = torch.randn(2, 5), torch.full((2, 5), 0.3)
    x_e1, x_e2 = sc_endpoints(x_s, v1, 0.8, 0.5, 0.0, lambda x, s: torch.full_like(x, 0.3))
    assert torch.allclose(x_e1, x_e2, atol=1e-7)

    def fail(x, s):
        raise AssertionError("no second call when t_m == t_e")

    x_e1, x_e2 = sc_endpoints(x_s, v1, 0.8, 0.4, 0.4, fail)
    assert torch.equal(x_e1, x_e2)


def test_sc_times_follow_salts_rules():
    rng = random.Random(0)

    def draws(e):
        return {sc_times(TRAIN8, BOUNDARIES, e, rng) for _ in range(300)}

    # exit at 1000 (next 875): t_e among the two largest boundaries below 875 (750, 500); t_m strictly between
    assert draws(0) == {(750, 875), (500, 875), (500, 750), (500, 625)}
    # exit at 625 (next 500): boundaries below 500 are 250 and 0
    assert {t_e for t_e, _ in draws(3)} == {250, 0}
    assert all(t_e < t_m < 625 and t_m in TRAIN8 for t_e, t_m in draws(3))
    assert draws(6) == {(0, 125)}  # exit at 250: only 0 lies below 125
    assert sc_times(TRAIN8, BOUNDARIES, 7, rng) is None  # the last step has no SC term
    with pytest.raises(ValueError, match="exit_index"):
        sc_times(TRAIN8, BOUNDARIES, 8, rng)


def test_training_grids_and_dmd_sigmas():
    assert DistillConfig(method="sc-dmd").train_timesteps == TRAIN8
    assert DistillConfig(method="dmd").train_timesteps == (1000, 750, 500, 250)
    assert DistillConfig(nfe=(2,)).inference_boundaries == (1000, 500, 0)
    assert to_sigma(500, 5.0) == pytest.approx(5 * 0.5 / 3)
    s = dmd_sigmas(4000, 1.0, 0.02, 0.98, torch.Generator().manual_seed(0))
    assert s.min() >= 0.02 and s.max() < 0.98 and torch.allclose(s * 1000, (s * 1000).round(), atol=1e-3)
    warped = dmd_sigmas(4000, 5.0, 0.02, 0.98, torch.Generator().manual_seed(0))
    # the same integer draws, warped by s sigma / (1 + (s - 1) sigma), then clamped
    assert torch.allclose(warped, (5 * s / (1 + 4 * s)).clamp(0.02, 0.98))
    assert warped.mean() > s.mean() + 0.1


def test_config_conventions_and_bad_values():
    assert DistillConfig(salt_guidance=3.0).cfg_weight == 4.0  # Salt's g = 3 is the standard w = 4
    assert DistillConfig(guidance=4.0).cfg_weight == 4.0
    assert DistillConfig(method="dmd").sc == 0 and DistillConfig().sc == 0.2
    with pytest.raises(ValueError, match="allowed: dmd, sc-dmd"):
        DistillConfig(method="gan")
    with pytest.raises(ValueError, match="not both"):
        DistillConfig(guidance=4.0, salt_guidance=3.0)
    with pytest.raises(ValueError, match="nfe must be"):
        DistillConfig(nfe=(3,))
    with pytest.raises(ValueError, match="sc-dmd"):
        DistillConfig(method="dmd", sc_weight=0.2)
    with pytest.raises(ValueError, match="batch_size"):
        DistillConfig(batch_size=0)
    with pytest.raises(ValueError, match="call_args"):
        DistillConfig(call_args={"guidance_scale": 2.0})
    with pytest.raises(ValueError, match="allowed: renoise, euler"):
        DistillConfig(rule="heun")
    config = DistillConfig(nfe=(4,), call_args={"height": 16})
    assert DistillConfig.from_dict(config.to_dict()) == config
