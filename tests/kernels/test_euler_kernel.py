"""euler_update: Triton vs the reference and accel.schedulers.flow.euler_update."""

import pytest
import torch

from accel.kernels.euler import euler_update, euler_update_fwd, euler_update_reference
from accel.schedulers.flow import euler_update as scheduler_euler_update

SHAPE = (5, 123, 123)


def sigmas(kind, gen):
    """(sigma, sigma_next) pairs: Python floats, 0-d, per sample (B,), per sample (B, 1, 1), per token (B, L)."""
    if kind == "float":
        return 0.7, 0.55
    if kind == "0d":
        return torch.tensor(0.7), torch.tensor(0.55)
    if kind == "per_sample":
        s = torch.rand(SHAPE[0], generator=gen)
        return s, s * 0.8
    if kind == "per_sample_broadcast":
        return torch.rand(SHAPE[0], 1, 1, generator=gen), 0.1
    s = torch.rand(SHAPE[:2], generator=gen)
    return s, s * 0.5


@pytest.mark.parametrize("kind", ["float", "0d", "per_sample", "per_sample_broadcast", "per_token"])
def test_matches_reference(kind, dtype, device, rng, assert_matches):
    x, v = (torch.randn(SHAPE, generator=rng).to(device, dtype) for _ in range(2))
    sigma, sigma_next = (s.to(device) if torch.is_tensor(s) else s for s in sigmas(kind, rng))
    out = euler_update_fwd(x, v, sigma, sigma_next)
    assert_matches(out, euler_update_reference(x.float(), v.float(), sigma, sigma_next), dtype)


def test_float32_matches_the_scheduler_step(device, rng, monkeypatch):
    # For float32 v the reference is the scheduler's step exactly; the kernel within float32 rounding (FMA).
    x, v = (torch.randn(2, 3, 8, 8, generator=rng).to(device) for _ in range(2))
    sigma, sigma_next = torch.tensor([0.9, 0.4], device=device), torch.tensor([0.8, 0.2], device=device)
    expected = scheduler_euler_update(x, v, sigma.view(2, 1, 1, 1), sigma_next.view(2, 1, 1, 1))
    torch.testing.assert_close(euler_update_fwd(x, v, sigma, sigma_next), expected, atol=1e-6, rtol=1e-6)
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    assert torch.equal(euler_update(x, v, sigma, sigma_next), expected)


def test_batch_one_mixed_dtypes_and_strides(device, rng, assert_matches):
    x = torch.randn(1, 64, 16, generator=rng).to(device).transpose(1, 2)  # float32 state, non-contiguous
    v = torch.randn(1, 16, 64, generator=rng).to(device, torch.bfloat16)
    out = euler_update_fwd(x, v, torch.tensor([0.3]), torch.tensor([0.2]))
    assert out.dtype == torch.bfloat16  # v's dtype, as the scheduler's step
    assert_matches(out, x + (0.2 - 0.3) * v.float(), torch.bfloat16)


def test_bad_inputs_raise(device):
    x = torch.zeros(2, 3, 4, device=device)
    with pytest.raises(ValueError, match="x and v must have one shape"):
        euler_update(x, torch.zeros(2, 3, 5, device=device), 0.5, 0.4)
    with pytest.raises(ValueError, match="sigma must be a float, 0-d, or shaped like a prefix"):
        euler_update_fwd(x, x, torch.zeros(3), 0.4)
