"""Flow SDE update `x + drift * dt + g * sqrt(dt) * noise` with the Gaussian noise drawn inside the kernel.

Euler-Maruyama for the SDE forms of flow sampling (accel.schedulers' flow->SDE conversion): the caller computes the
drift from the velocity; dt > 0 is the step size and g the diffusion coefficient. Drawing the noise in the kernel
saves writing and re-reading a noise tensor (a third of the traffic of the update).

Noise: Philox (Triton's tl.randn4x), counter = element index // 4, so element e gets the same number whatever the
block size or grid, and a given (seed, shape) is reproducible run to run on a GPU. The reference twin draws from a
torch.Generator seeded with `seed`, so the two paths give different (equally distributed) noise for one seed:
tests compare statistics, determinism, and the exact noise-free part (g = 0). Use a new seed per step.

Tiers: `_sde_update_kernel` -> `sde_update_fwd` (launcher) -> `sde_update` (public, dispatches);
`sde_update_reference` is the pure-torch twin. Forward only.
"""

from __future__ import annotations

import numbers

import torch

from accel.kernels import dispatch
from accel.kernels._common import flat_param, num_warps_for, step_param, tile_elements
from accel.kernels._triton import cdiv, check_launchable, kernel, tl

MAX_SEED = 2**63 - 1


@kernel
def _sde_update_kernel(
    # Pointers: x, drift flat; dt, g flat float32 (one entry per `*_inner` elements of x)
    x_ptr, drift_ptr, dt_ptr, g_ptr, out_ptr,
    # Sizes and the Philox seed
    n, dt_inner, g_inner, seed,
    # Meta-parameters (BLOCK is a multiple of 4: one Philox call yields 4 normals)
    BLOCK: tl.constexpr,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK  # int64: video latents can pass 2^31
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    drift = tl.load(drift_ptr + offs, mask=mask).to(tl.float32)
    dt = tl.load(dt_ptr + offs // dt_inner, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs // g_inner, mask=mask, other=0.0)
    # Four normals per counter, interleaved so that element 4c + j takes the j-th normal of counter c.
    n1, n2, n3, n4 = tl.randn4x(seed, start // 4 + tl.arange(0, BLOCK // 4))
    noise = tl.interleave(tl.interleave(n1, n3), tl.interleave(n2, n4))
    out = x + drift * dt + g * tl.sqrt(dt) * noise
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, drift: torch.Tensor, seed: int) -> None:
    if x.shape != drift.shape:
        raise ValueError(f"x and drift must have one shape, got {tuple(x.shape)} and {tuple(drift.shape)}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63 - 1], got {seed!r}")


def sde_update_fwd(x: torch.Tensor, drift: torch.Tensor, dt: torch.Tensor | float, g: torch.Tensor | float,
                   seed: int) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `sde_update`. Non-contiguous x or drift are copied first.
    """
    check_launchable(x, drift)
    _check(x, drift, seed)
    dt, dt_inner = flat_param(step_param(dt, x, "dt"), x)
    g, g_inner = flat_param(step_param(g, x, "g"), x)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return out
    block = tile_elements()
    _sde_update_kernel[(cdiv(n, block),)](
        x.contiguous(), drift.contiguous(), dt, g, out,
        n, dt_inner, g_inner, int(seed),
        BLOCK=block, num_warps=num_warps_for(block),
    )
    return out


def sde_update_reference(x: torch.Tensor, drift: torch.Tensor, dt: torch.Tensor | float, g: torch.Tensor | float,
                         seed: int) -> torch.Tensor:
    """Pure-torch twin in float32; the noise comes from torch.Generator(x.device).manual_seed(seed).

    Args and returns: as `sde_update`.
    """
    _check(x, drift, seed)
    dt, g = step_param(dt, x, "dt"), step_param(g, x, "g")
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
    return (x.float() + drift.float() * dt + g * dt.sqrt() * noise).to(x.dtype)


def sde_update(x: torch.Tensor, drift: torch.Tensor, dt: torch.Tensor | float, g: torch.Tensor | float,
               seed: int) -> torch.Tensor:
    """One Euler-Maruyama step `x + drift * dt + g * sqrt(dt) * noise`, noise ~ N(0, I), in float32.

    Args:
        x: (B, ...) state, any float dtype.
        drift: x's shape, any float dtype.
        dt: step size >= 0 (sqrt(dt) of a negative dt is NaN): a Python float, 0-d, per sample (B,) or per token
            (B, L) for x (B, L, ...).
        g: diffusion coefficient, same shapes as dt.
        seed: int in [0, 2**63 - 1]; one (seed, shape) gives the same noise every run on one path. The Triton and
            reference paths draw different noise for one seed (see the module docstring).

    Returns:
        x_next, x's shape and dtype.
    """
    if dispatch.use_triton(x, drift):
        return sde_update_fwd(x, drift, dt, g, seed)
    return sde_update_reference(x, drift, dt, g, seed)
