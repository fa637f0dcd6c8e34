"""grouped_swiglu: Triton vs the pure-torch reference, and the reference vs diffusers' per-expert loop."""

import pytest
import torch
from diffusers.models.transformers.transformer_nucleusmoe_image import SwiGLUExperts

from accel.kernels.moe import grouped_swiglu, grouped_swiglu_fwd, grouped_swiglu_reference

# (E, N, D, I): odd sizes that cover partial tiles in every dimension, one expert, and a reduction over two tiles.
CASES = [
    (3, 5, 37, 19),
    (1, 17, 16, 16),
    (5, 2, 70, 33),
    (2, 33, 130, 9),
]


def weights(e, d, inter, rng, device, dtype):
    gate_up = (torch.randn(e, d, 2 * inter, generator=rng) / d ** 0.5).to(device, dtype)
    down = (torch.randn(e, inter, d, generator=rng) / inter ** 0.5).to(device, dtype)
    return gate_up, down


@pytest.mark.parametrize("e,n,d,inter", CASES)
def test_matches_reference(e, n, d, inter, dtype, device, rng):
    x = torch.randn(e, n, d, generator=rng).to(device, dtype)
    gate_up, down = weights(e, d, inter, rng, device, dtype)
    weight = torch.rand(e, n, generator=rng).to(device)
    out = grouped_swiglu_fwd(x, gate_up, down, weight)
    expected = grouped_swiglu_reference(x.float(), gate_up.float(), down.float(), weight)
    assert out.dtype == dtype
    # float32 accumulation in both; the kernel rounds the SwiGLU product once to the dtype, so low precision
    # differs by about one ulp of h carried through the down projection.
    tol = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 2e-2), torch.float16: (4e-3, 2e-3)}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tol[0], rtol=tol[1])
    unweighted = grouped_swiglu_fwd(x, gate_up, down)
    torch.testing.assert_close(unweighted.float(), grouped_swiglu_reference(x.float(), gate_up.float(),
                                                                            down.float()), atol=tol[0], rtol=tol[1])


def test_strided_inputs(device, rng):
    x = torch.randn(7, 3, 40, generator=rng).to(device).transpose(0, 1)  # (3, 7, 40), not contiguous
    gate_up, down = weights(3, 40, 24, rng, device, torch.float32)
    torch.testing.assert_close(grouped_swiglu_fwd(x, gate_up, down), grouped_swiglu_reference(x, gate_up, down),
                               atol=1e-5, rtol=1e-5)


def test_reference_equals_diffusers_expert_loop(rng):
    """The twin computes what SwiGLUExperts' loop computes (to float32 reordering: batched vs single matmuls)."""
    e, n, d, inter = 4, 6, 24, 10
    experts = SwiGLUExperts(hidden_size=d, moe_intermediate_dim=inter, num_experts=e)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(e, d, 2 * inter, generator=rng))
        experts.down_proj.copy_(torch.randn(e, inter, d, generator=rng))
        x = torch.randn(e * n, d, generator=rng)
        loop = experts(x, torch.full((e,), n))
        twin = grouped_swiglu_reference(x.view(e, n, d), experts.gate_up_proj, experts.down_proj)
    torch.testing.assert_close(twin.reshape(e * n, d), loop, atol=1e-5, rtol=1e-5)


def test_public_function_on_cpu_is_the_reference(rng, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    x = torch.randn(2, 3, 8, generator=rng)
    gate_up, down = weights(2, 8, 4, rng, "cpu", torch.float32)
    assert torch.equal(grouped_swiglu(x, gate_up, down), grouped_swiglu_reference(x, gate_up, down))


def test_bad_shapes_raise(device):
    z = lambda *shape: torch.zeros(shape, device=device)  # noqa: E731
    with pytest.raises(ValueError, match="expected gate_up"):
        grouped_swiglu(z(2, 3, 8), z(2, 8, 7), z(2, 4, 8))
    with pytest.raises(ValueError, match="weight must be"):
        grouped_swiglu(z(2, 3, 8), z(2, 8, 8), z(2, 4, 8), weight=z(3, 2))
    with pytest.raises(ValueError, match="3-D"):
        grouped_swiglu_fwd(z(6, 8), z(2, 8, 8), z(2, 4, 8))


@pytest.mark.parametrize("dtype_", [torch.float32, torch.bfloat16])
def test_reference_same_with_and_without_autograd(dtype_, rng):
    """Without autograd the twin reuses its buffers in place; with it (training) it must give the same values and
    differentiate."""
    x = torch.randn(3, 5, 16, generator=rng).to(dtype_)
    gate_up, down = weights(3, 16, 8, rng, "cpu", dtype_)
    weight = torch.rand(3, 5, generator=rng)
    with torch.no_grad():
        fast = grouped_swiglu_reference(x, gate_up, down, weight)
    x.requires_grad_(True)
    slow = grouped_swiglu_reference(x, gate_up, down, weight)
    assert torch.equal(fast, slow.detach())
    slow.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
