"""sde_update: in-kernel Philox noise (statistics, determinism) and the exact noise-free part.

The kernel and the reference draw different random bits for one seed, so the noise is tested by its moments and
its reproducibility, and everything else with g = 0, where both are deterministic.
"""

import math

import pytest
import torch

from accel.kernels.sde import sde_update, sde_update_fwd, sde_update_reference

N = 1 << 16  # mean and std of 65536 normals are within 5 / sqrt(N) = 0.02 of 0 and 1 (5 sigma)


def test_noise_is_standard_normal(device):
    zero = torch.zeros(4, N // 4, device=device)
    noise = sde_update_fwd(zero, zero, 1.0, 1.0, seed=1234)
    assert abs(noise.mean().item()) < 5 / math.sqrt(N)
    assert abs(noise.std().item() - 1) < 5 / math.sqrt(N)
    # Independent coordinates: neighbours (which share a Philox counter in groups of 4) are uncorrelated.
    flat = noise.flatten()
    assert abs((flat[:-1] * flat[1:]).mean().item()) < 5 / math.sqrt(N)
    assert (flat.abs() > 4).float().mean() < 1e-3  # no heavy tail (P(|z| > 4) = 6e-5)


def test_same_seed_same_noise_new_seed_new_noise(device):
    zero = torch.zeros(3, 1000, device=device)
    a = sde_update_fwd(zero, zero, 0.5, 2.0, seed=7)
    assert torch.equal(a, sde_update_fwd(zero, zero, 0.5, 2.0, seed=7))
    b = sde_update_fwd(zero, zero, 0.5, 2.0, seed=8)
    assert (a - b).abs().mean() > 0.5
    # The reference is reproducible for a seed too (its own generator).
    assert torch.equal(sde_update_reference(zero, zero, 0.5, 2.0, 7), sde_update_reference(zero, zero, 0.5, 2.0, 7))


def test_noise_scales_with_g_and_sqrt_dt_per_sample(device):
    zero = torch.zeros(2, 1, N // 2, device=device)
    g, dt = torch.tensor([0.5, 2.0], device=device), torch.tensor([0.25, 0.04], device=device)
    out = sde_update_fwd(zero, zero, dt, g, seed=3)
    std = out.flatten(1).std(dim=1)
    assert torch.allclose(std, g * dt.sqrt(), rtol=0.03)  # 0.25 and 0.4


@pytest.mark.parametrize("dt_kind", ["float", "per_sample", "per_token"])
def test_noise_free_part_matches_reference(dt_kind, dtype, device, rng, assert_matches):
    x, drift = (torch.randn(5, 123, 123, generator=rng).to(device, dtype) for _ in range(2))
    dt = {"float": 0.05, "per_sample": torch.rand(5, generator=rng).to(device),
          "per_token": torch.rand(5, 123, generator=rng).to(device)}[dt_kind]
    out = sde_update_fwd(x, drift, dt, 0.0, seed=11)
    assert_matches(out, sde_update_reference(x.float(), drift.float(), dt, 0.0, 11), dtype)


def test_public_function_without_triton_is_the_reference(device, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    zero = torch.zeros(2, 10, device=device)
    assert torch.equal(sde_update(zero, zero, 0.3, 1.0, 5), sde_update_reference(zero, zero, 0.3, 1.0, 5))


def test_bad_inputs_raise(device):
    x = torch.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match="seed must be an int"):
        sde_update(x, x, 0.1, 1.0, seed=-1)
    with pytest.raises(ValueError, match="x and drift must have one shape"):
        sde_update_fwd(x, torch.zeros(3, 2, device=device), 0.1, 1.0, seed=0)
    with pytest.raises(ValueError, match="g must be a float, 0-d"):
        sde_update(x, x, 0.1, torch.ones(3), seed=0)
