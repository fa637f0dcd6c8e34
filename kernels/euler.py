"""Flow Euler update `x_next = x + (sigma_next - sigma) * v` in float32, with per-sample or per-token sigma.

The convention is DESIGN.md's (sigma = 1 is noise, v = eps - x0, diffusers' FlowMatchEulerDiscreteScheduler);
per-token sigma is what heterogeneous step allocation needs. Unfused, torch makes float32 temporaries for x, v and
their product; the kernel reads x and v once and writes x_next once.

Tiers: `_euler_update_kernel` -> `euler_update_fwd` (launcher) -> `euler_update` (public, dispatches);
`euler_update_reference` is the pure-torch twin. Forward only.
"""

from __future__ import annotations

import torch

from accel.kernels import dispatch
from accel.kernels._common import flat_param, num_warps_for, step_param, tile_elements
from accel.kernels._triton import cdiv, check_launchable, kernel, tl


@kernel
def _euler_update_kernel(
    # Pointers: x, v flat; sigma, sigma_next flat float32 (one entry per `*_inner` elements of x)
    x_ptr, v_ptr, sigma_ptr, sigma_next_ptr, out_ptr,
    # Sizes
    n, sigma_inner, sigma_next_inner,
    # Meta-parameters
    SCALAR_SIGMA: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: video latents can pass 2^31
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    if SCALAR_SIGMA:  # the common case: one sigma for the batch, no per-element division
        dt = tl.load(sigma_next_ptr) - tl.load(sigma_ptr)
    else:
        dt = (tl.load(sigma_next_ptr + offs // sigma_next_inner, mask=mask)
              - tl.load(sigma_ptr + offs // sigma_inner, mask=mask))
    tl.store(out_ptr + offs, (x + dt * v).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, v: torch.Tensor) -> None:
    if x.shape != v.shape:
        raise ValueError(f"x and v must have one shape, got {tuple(x.shape)} and {tuple(v.shape)}")


def euler_update_fwd(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
                     sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `euler_update`. Non-contiguous x or v are copied first.
    """
    check_launchable(x, v)
    _check(x, v)
    sigma, sigma_inner = flat_param(step_param(sigma, x, "sigma"), x)
    sigma_next, sigma_next_inner = flat_param(step_param(sigma_next, x, "sigma_next"), x)
    out = torch.empty(x.shape, dtype=v.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    block = tile_elements()
    _euler_update_kernel[(cdiv(n, block),)](
        x.contiguous(), v.contiguous(), sigma, sigma_next, out,
        n, sigma_inner, sigma_next_inner,
        SCALAR_SIGMA=sigma.numel() == 1 and sigma_next.numel() == 1, BLOCK=block, num_warps=num_warps_for(block),
    )
    return out


def euler_update_reference(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
                           sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Pure-torch twin, all in float32.

    Equals accel.schedulers.flow.euler_update for float32 v. For half-precision v with a 0-d sigma,
    euler_update (like diffusers' scheduler) rounds (sigma_next - sigma) * v to v's dtype before adding, because
    0-d tensors do not promote; this twin and the kernel keep the product in float32.

    Args and returns: as `euler_update`.
    """
    _check(x, v)
    dt = step_param(sigma_next, x, "sigma_next") - step_param(sigma, x, "sigma")
    return (x.float() + dt * v.float()).to(v.dtype)


def euler_update(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
                 sigma_next: torch.Tensor | float) -> torch.Tensor:
    """One flow Euler step `x + (sigma_next - sigma) * v`, computed in float32.

    Args:
        x: (B, ...) state, any float dtype.
        v: velocity, x's shape, any float dtype.
        sigma, sigma_next: Python floats, 0-d tensors, per sample (B,) or per token (B, L) for x (B, L, ...)
            (any shape that is a prefix of x's, trailing 1s allowed).

    Returns:
        x_next, x's shape, in v's dtype (as accel.schedulers.flow.euler_update).
    """
    if dispatch.use_triton(x, v):
        return euler_update_fwd(x, v, sigma, sigma_next)
    return euler_update_reference(x, v, sigma, sigma_next)
