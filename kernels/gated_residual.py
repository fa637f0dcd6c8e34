"""Gated residual `x + gate * y` (adaLN-Zero's gate, DiT / Flux / Wan blocks).

Unfused this is two passes over (B, L, D) (multiply, then add; Wan adds two float32 casts); the kernel reads x, y
and the gate once and writes once, computing in float32.

Tiers: `_gated_residual_kernel` -> `gated_residual_fwd` (launcher) -> `gated_residual` (public, dispatches);
`gated_residual_reference` is the pure-torch twin. Forward only (no training path uses it yet).
"""

from __future__ import annotations

import torch

from accel.kernels import dispatch
from accel.kernels._common import modulation_view, num_warps_for, rows_per_program
from accel.kernels._triton import cdiv, check_launchable, kernel, next_power_of_2, tl

MAX_BLOCK_D = 1024  # columns per program; wider rows take several programs (no reduction along D)


@kernel
def _gated_residual_kernel(
    # Pointers
    x_ptr, y_ptr, gate_ptr, out_ptr,
    # Sizes: rows = B * L, D features per row
    n_rows, seq_len, d,
    # Strides in elements; gate strides are 0 along broadcast dims
    stride_xb, stride_xl, stride_xd,
    stride_yb, stride_yl, stride_yd,
    stride_gb, stride_gl, stride_gd,
    # Meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: B*L*D can pass 2^31
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = rows // seq_len
    pos = rows % seq_len
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]

    x = tl.load(x_ptr + (b * stride_xb + pos * stride_xl)[:, None] + cols[None, :] * stride_xd, mask=mask)
    y = tl.load(y_ptr + (b * stride_yb + pos * stride_yl)[:, None] + cols[None, :] * stride_yd, mask=mask)
    gate = tl.load(gate_ptr + (b * stride_gb + pos * stride_gl)[:, None] + cols[None, :] * stride_gd, mask=mask)
    out = x.to(tl.float32) + gate.to(tl.float32) * y.to(tl.float32)
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 3 or y.shape != x.shape:
        raise ValueError(f"x and y must both be (B, L, D) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def gated_residual_fwd(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `gated_residual`.
    """
    check_launchable(x, y, gate)
    _check(x, y)
    gate = modulation_view(gate, x, "gate").expand_as(x)  # stride 0 along broadcast dims
    b, seq, d = x.shape
    out = torch.empty((b, seq, d), dtype=x.dtype, device=x.device)
    n_rows = b * seq
    if n_rows == 0:
        return out
    block_d = min(next_power_of_2(d), MAX_BLOCK_D)
    block_m = rows_per_program(n_rows, block_d)
    grid = (cdiv(n_rows, block_m), cdiv(d, block_d))
    _gated_residual_kernel[grid](
        x, y, gate, out,
        n_rows, seq, d,
        *x.stride(), *y.stride(), *gate.stride(),
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps_for(block_m * block_d),
    )
    return out


def gated_residual_reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Pure-torch twin: the built-in DiT's `x + gate * y`, in the promoted dtype, cast to x's dtype.

    Args and returns: as `gated_residual`.
    """
    _check(x, y)
    out = x + modulation_view(gate, x, "gate") * y
    return out if out.dtype == x.dtype else out.to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`x + gate * y` with a per-sample or per-token gate.

    Args:
        x: (B, L, D) residual stream, float32 / bfloat16 / float16, any strides.
        y: (B, L, D) branch output (attention or MLP), any float dtype.
        gate: (B, D) or (B, 1, D) per sample, or (B, L, D) per token; any float dtype. A leading 1 instead of B
            broadcasts over the batch.

    Returns:
        (B, L, D) in x's dtype. The Triton path computes in float32 and rounds once (as Wan does explicitly); the
        reference computes in the promoted dtype, as the built-in DiT and Flux do.
    """
    if dispatch.use_triton(x, y, gate):
        return gated_residual_fwd(x, y, gate)
    return gated_residual_reference(x, y, gate)
