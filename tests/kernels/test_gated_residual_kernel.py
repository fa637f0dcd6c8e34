"""gated_residual: Triton vs the pure-torch reference."""

import pytest
import torch

from accel.kernels.gated_residual import gated_residual, gated_residual_fwd, gated_residual_reference

# (B, L, D, gate shape); D=1500 spans two column blocks of the kernel.
CASES = [
    (5, 123, 123, (5, 123)),
    (5, 123, 123, (5, 123, 123)),
    (1, 9, 64, (1, 1, 64)),
    (2, 4, 1500, (2, 1500)),
    (3, 10, 128, (1, 128)),
]


@pytest.mark.parametrize("b,seq,d,gate_shape", CASES)
def test_matches_reference(b, seq, d, gate_shape, dtype, device, rng, assert_matches, assert_native):
    x, y = (torch.randn(b, seq, d, generator=rng).to(device, dtype) for _ in range(2))
    gate = torch.randn(gate_shape, generator=rng).to(device, dtype)
    out = gated_residual_fwd(x, y, gate)
    assert_matches(out, gated_residual_reference(x.float(), y.float(), gate.float()), dtype)
    assert_native(out, gated_residual_reference(x, y, gate))


def test_mixed_dtypes_as_wan(device, rng, assert_matches):
    # Wan: bfloat16 stream and branch, float32 gate; computed in float32, rounded once to x's dtype.
    x, y = (torch.randn(2, 7, 32, generator=rng).to(device, torch.bfloat16) for _ in range(2))
    gate = torch.randn(2, 1, 32, generator=rng).to(device)
    out = gated_residual_fwd(x, y, gate)
    assert_matches(out, x.float() + y.float() * gate, torch.bfloat16)
    assert torch.equal(gated_residual_reference(x, y, gate), (x.float() + y * gate).type_as(x))  # Wan's line


def test_strided_inputs(device, rng, assert_matches):
    x = torch.randn(6, 2, 48, generator=rng).to(device).transpose(0, 1)
    y = torch.randn(2, 6, 96, generator=rng).to(device)[..., ::2]
    gate = torch.randn(2, 3 * 48, generator=rng).to(device).chunk(3, dim=1)[1]
    assert_matches(gated_residual_fwd(x, y, gate), gated_residual_reference(x, y, gate), torch.float32)


def test_public_function_without_triton_is_the_dit_line(device, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    x, y, gate = (torch.randn(shape).to(device) for shape in ((2, 5, 8), (2, 5, 8), (2, 1, 8)))
    assert torch.equal(gated_residual(x, y, gate), x + gate * y)


def test_bad_shapes_raise(device):
    z = lambda *shape: torch.zeros(shape, device=device)  # noqa: E731
    with pytest.raises(ValueError, match="x and y must both be"):
        gated_residual(z(2, 5, 8), z(2, 4, 8), z(2, 8))
    with pytest.raises(ValueError, match="gate must be"):
        gated_residual_fwd(z(2, 5, 8), z(2, 5, 8), z(2, 5))
