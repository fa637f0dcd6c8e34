"""resample_euler_update: gather by ancestor + Euler step, Triton vs the reference."""

import pytest
import torch

from accel.kernels._triton import count_launches
from accel.kernels.resample import resample_euler_update, resample_euler_update_fwd, resample_euler_update_reference


@pytest.mark.parametrize("sigma_kind", ["float", "per_particle", "per_token"])
def test_matches_reference(sigma_kind, dtype, device, rng, assert_matches):
    x, v = (torch.randn(5, 123, 123, generator=rng).to(device, dtype) for _ in range(2))
    ancestors = torch.tensor([4, 4, 0, 2, 1, 1, 3], device=device)  # more children than particles; repeats
    sigma = {"float": 0.6, "per_particle": torch.rand(5, generator=rng).to(device),
             "per_token": torch.rand(5, 123, generator=rng).to(device)}[sigma_kind]
    out = resample_euler_update_fwd(x, v, ancestors, sigma, 0.2)
    assert out.shape == (7, 123, 123)
    assert_matches(out, resample_euler_update_reference(x.float(), v.float(), ancestors, sigma, 0.2), dtype)


def test_equals_gather_then_euler(device, rng, force_triton):
    x, v = (torch.randn(4, 3, 8, 8, generator=rng).to(device) for _ in range(2))
    ancestors = torch.tensor([1, 1, 3], dtype=torch.int32, device=device)
    sigma, sigma_next = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device), torch.tensor(0.5, device=device)
    a = ancestors.long()
    expected = x[a] + (sigma_next - sigma[a]).view(3, 1, 1, 1) * v[a]
    with count_launches() as launches:
        out = resample_euler_update(x, v, ancestors, sigma, sigma_next)
    assert launches == {"resample_euler": 1}  # the kernel ran, not the reference
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(resample_euler_update_reference(x, v, ancestors, sigma, sigma_next), expected,
                               atol=1e-6, rtol=1e-6)


def test_single_particle_and_empty_ancestors(device, rng):
    x, v = (torch.randn(1, 64, generator=rng).to(device) for _ in range(2))
    out = resample_euler_update_fwd(x, v, torch.tensor([0, 0], device=device), 0.3, 0.1)
    torch.testing.assert_close(out, (x + (0.1 - 0.3) * v).expand(2, 64))
    empty = torch.tensor([], dtype=torch.long, device=device)
    assert resample_euler_update_fwd(x, v, empty, 0.3, 0.1).shape == (0, 64)


def test_bad_inputs_raise(device):
    x = torch.zeros(3, 4, device=device)
    with pytest.raises(ValueError, match="ancestors must be a 1-D int32 or int64"):
        resample_euler_update(x, x, torch.tensor([0.0], device=device), 0.5, 0.4)
    with pytest.raises(IndexError):
        resample_euler_update_reference(x.cpu(), x.cpu(), torch.tensor([5]), 0.5, 0.4)  # the reference checks
