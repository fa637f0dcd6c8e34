"""Particle resampling fused with the next Euler step: `x_next[i] = x[a_i] + (sigma_next - sigma) * v[a_i]`.

Sequential Monte Carlo / particle search resamples ancestors a_i after scoring, then takes the next step. Unfused
that is two gathers (x[a], v[a]) written out and read back by the update; the kernel reads each ancestor's x and v
once and writes the child once. Per-particle (or per-particle-token) sigma follows the ancestor.

Tiers: `_resample_euler_kernel` -> `resample_euler_update_fwd` (launcher) -> `resample_euler_update` (public,
dispatches); `resample_euler_update_reference` is the pure-torch twin. Forward only.
"""

from __future__ import annotations

import torch

from accel.kernels import dispatch
from accel.kernels._common import flat_param, num_warps_for, step_param, tile_elements
from accel.kernels._triton import cdiv, check_launchable, kernel, next_power_of_2, tl


@kernel
def _resample_euler_kernel(
    # Pointers: x, v (N, K) flat; ancestors (M,); sigma, sigma_next flat float32 over x's elements
    x_ptr, v_ptr, ancestor_ptr, sigma_ptr, sigma_next_ptr, out_ptr,
    # Sizes: K elements per particle; one sigma entry per `*_inner` elements of x
    k, sigma_inner, sigma_next_inner,
    # Meta-parameters
    SCALAR_SIGMA: tl.constexpr, BLOCK: tl.constexpr,
):
    child = tl.program_id(0).to(tl.int64)
    ancestor = tl.load(ancestor_ptr + child).to(tl.int64)  # one scalar load per program
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < k
    src = ancestor * k + cols
    x = tl.load(x_ptr + src, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + src, mask=mask).to(tl.float32)
    if SCALAR_SIGMA:
        dt = tl.load(sigma_next_ptr) - tl.load(sigma_ptr)
    else:
        dt = (tl.load(sigma_next_ptr + src // sigma_next_inner, mask=mask)
              - tl.load(sigma_ptr + src // sigma_inner, mask=mask))
    tl.store(out_ptr + child * k + cols, (x + dt * v).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, v: torch.Tensor, ancestors: torch.Tensor) -> None:
    if x.shape != v.shape or x.ndim < 1:
        raise ValueError(f"x and v must have one shape (N, ...), got {tuple(x.shape)} and {tuple(v.shape)}")
    if ancestors.ndim != 1 or ancestors.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ancestors must be a 1-D int32 or int64 tensor, got {tuple(ancestors.shape)} "
                         f"{ancestors.dtype}")


def resample_euler_update_fwd(x: torch.Tensor, v: torch.Tensor, ancestors: torch.Tensor,
                              sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `resample_euler_update`. Non-contiguous x or v are copied first.
    """
    check_launchable(x, v, ancestors)
    _check(x, v, ancestors)
    sigma, sigma_inner = flat_param(step_param(sigma, x, "sigma"), x)
    sigma_next, sigma_next_inner = flat_param(step_param(sigma_next, x, "sigma_next"), x)
    m = ancestors.shape[0]
    out = torch.empty((m, *x.shape[1:]), dtype=v.dtype, device=x.device)
    k = x[0].numel() if x.shape[0] else 0
    if m == 0 or k == 0:
        return out
    block = min(tile_elements(), next_power_of_2(k))
    _resample_euler_kernel[(m, cdiv(k, block))](
        x.contiguous(), v.contiguous(), ancestors.contiguous(), sigma, sigma_next, out,
        k, sigma_inner, sigma_next_inner,
        SCALAR_SIGMA=sigma.numel() == 1 and sigma_next.numel() == 1, BLOCK=block, num_warps=num_warps_for(block),
    )
    return out


def resample_euler_update_reference(x: torch.Tensor, v: torch.Tensor, ancestors: torch.Tensor,
                                    sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Pure-torch twin: gather, then accel.kernels.euler's float32 update.

    Args and returns: as `resample_euler_update`.
    """
    _check(x, v, ancestors)
    dt = step_param(sigma_next, x, "sigma_next") - step_param(sigma, x, "sigma")
    dt = dt[ancestors] if dt.shape[0] > 1 else dt  # per-particle sigma follows the ancestor
    return (x[ancestors].float() + dt * v[ancestors].float()).to(v.dtype)


def resample_euler_update(x: torch.Tensor, v: torch.Tensor, ancestors: torch.Tensor,
                          sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Gather particles by ancestor index and take an Euler step: `x[a] + (sigma_next - sigma)[a] * v[a]`.

    Args:
        x: (N, ...) particles, any float dtype.
        v: their velocities, x's shape, any float dtype.
        ancestors: (M,) int32/int64 indices in [0, N) (M may differ from N). The Triton path does not check the
            range (that would need a GPU sync); the reference raises IndexError.
        sigma, sigma_next: Python floats, 0-d, per particle (N,) or per particle token (N, L) for x (N, L, ...);
            per-particle values follow the ancestor.

    Returns:
        (M, ...) children in v's dtype.
    """
    if dispatch.use_triton(x, v, ancestors):
        return resample_euler_update_fwd(x, v, ancestors, sigma, sigma_next)
    return resample_euler_update_reference(x, v, ancestors, sigma, sigma_next)
