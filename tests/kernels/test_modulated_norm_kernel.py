"""modulated_layer_norm: Triton vs the pure-torch reference."""

import pytest
import torch

from accel.kernels.modulated_norm import (
    modulated_layer_norm, modulated_layer_norm_fwd, modulated_layer_norm_reference,
)

# (B, L, D, modulation shape): odd sizes, batch 1, per token, batch-broadcast, and Flux's width (3072).
CASES = [
    (5, 123, 123, "per_sample"),
    (5, 123, 123, "per_token"),
    (1, 7, 64, "per_sample_3d"),
    (2, 33, 128, "batch_broadcast"),
    (1, 8, 3072, "per_sample"),
]


def _modulation(kind, b, seq, d, gen):
    shape = {"per_sample": (b, d), "per_sample_3d": (b, 1, d), "per_token": (b, seq, d), "batch_broadcast": (1, d)}
    return torch.randn(shape[kind], generator=gen), torch.randn(shape[kind], generator=gen)


@pytest.mark.parametrize("b,seq,d,kind", CASES)
def test_matches_reference(b, seq, d, kind, dtype, device, rng, assert_matches, assert_native):
    x = (3 * torch.randn(b, seq, d, generator=rng) + 1).to(device, dtype)  # a non-zero mean tests the centring
    scale, shift = (t.to(device, dtype) for t in _modulation(kind, b, seq, d, rng))
    out = modulated_layer_norm_fwd(x, scale, shift, eps=1e-6)
    assert out.shape == x.shape
    assert_matches(out, modulated_layer_norm_reference(x.float(), scale.float(), shift.float(), 1e-6), dtype)
    assert_native(out, modulated_layer_norm_reference(x, scale, shift, 1e-6))


def test_float32_modulation_with_half_x_as_wan(device, rng, assert_matches):
    # Wan keeps scale/shift in float32 while x is bfloat16; the output keeps x's dtype.
    x = torch.randn(2, 17, 96, generator=rng).to(device, torch.bfloat16)
    scale, shift = (torch.randn(2, 1, 96, generator=rng).to(device) for _ in range(2))
    out = modulated_layer_norm_fwd(x, scale, shift)
    assert_matches(out, modulated_layer_norm_reference(x.float(), scale, shift), torch.bfloat16)
    # The reference then computes in float32, as Wan's FP32LayerNorm path does.
    assert torch.equal(modulated_layer_norm_reference(x, scale, shift),
                       modulated_layer_norm_reference(x.float(), scale, shift).bfloat16())


def test_strided_inputs(device, rng, assert_matches):
    x = torch.randn(40, 3, 64, generator=rng).to(device).transpose(0, 1)  # (3, 40, 64), non-contiguous
    emb = torch.randn(3, 6 * 64, generator=rng).to(device)
    shift, scale = emb.chunk(6, dim=1)[:2]  # chunks of the adaLN projection are strided views
    out = modulated_layer_norm_fwd(x, scale, shift)
    assert_matches(out, modulated_layer_norm_reference(x, scale, shift), torch.float32)


def test_public_function_without_triton_is_the_dit_line(device, rng, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")  # the reference path, on any device
    x = torch.randn(2, 5, 8, generator=rng).to(device)
    scale, shift = torch.randn(2, 8, generator=rng).to(device), torch.randn(2, 8, generator=rng).to(device)
    ln = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    assert torch.equal(modulated_layer_norm(x, scale, shift), ln(x) * (1 + scale[:, None]) + shift[:, None])


def test_bad_shapes_raise(device):
    x = torch.zeros(2, 5, 8, device=device)
    with pytest.raises(ValueError, match=r"scale must be \(B, D\), \(B, 1, D\) or \(B, L, D\)"):
        modulated_layer_norm(x, torch.zeros(3, 8, device=device), torch.zeros(2, 8, device=device))
    with pytest.raises(ValueError, match=r"x must be \(B, L, D\)"):
        modulated_layer_norm_fwd(*(torch.zeros(5, 8, device=device) for _ in range(3)))
