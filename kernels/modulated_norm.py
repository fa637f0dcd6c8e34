"""adaLN modulation fused with LayerNorm: `LN(x) * (1 + scale) + shift` (DiT, Peebles & Xie 2023).

Unfused, a DiT block reads and writes the (B, L, D) activations four times for this line (layer_norm, 1 + scale,
multiply, add); the kernel reads x once and writes once, with the statistics in float32 registers.

Tiers: `_modulated_layer_norm_kernel` (Triton) -> `modulated_layer_norm_fwd` (launcher) ->
`modulated_layer_norm` (public, dispatches) ; `modulated_layer_norm_reference` is the pure-torch twin.
Forward only: no training path uses it yet (distillation will need a backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from accel.kernels._common import modulation_view, num_warps_for, rows_per_program
from accel.kernels._triton import cdiv, check_launchable, kernel, next_power_of_2, tl
from accel.kernels import dispatch

MAX_D = 1 << 16  # one row lives in registers; wider rows would spill (no DiT is that wide)


@kernel
def _modulated_layer_norm_kernel(
    # Pointers
    x_ptr, scale_ptr, shift_ptr, out_ptr,
    # Sizes: rows = B * L, D features per row
    n_rows, seq_len, d,
    # Strides in elements; scale/shift strides are 0 along broadcast dims
    stride_xb, stride_xl, stride_xd,
    stride_sb, stride_sl, stride_sd,
    stride_hb, stride_hl, stride_hd,
    eps,
    # Meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: B*L*D can pass 2^31
    cols = tl.arange(0, BLOCK_D)
    b = rows // seq_len
    pos = rows % seq_len
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]

    x = tl.load(x_ptr + (b * stride_xb + pos * stride_xl)[:, None] + cols[None, :] * stride_xd,
                mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / d
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padded columns must not enter the variance
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / d + eps)

    scale = tl.load(scale_ptr + (b * stride_sb + pos * stride_sl)[:, None] + cols[None, :] * stride_sd,
                    mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + (b * stride_hb + pos * stride_hl)[:, None] + cols[None, :] * stride_hd,
                    mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def modulated_layer_norm_fwd(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                             eps: float = 1e-6) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `modulated_layer_norm`.
    """
    check_launchable(x, scale, shift)
    scale = modulation_view(scale, x, "scale").expand_as(x)  # stride 0 along broadcast dims
    shift = modulation_view(shift, x, "shift").expand_as(x)
    b, seq, d = x.shape
    if d > MAX_D:
        raise ValueError(f"D must be <= {MAX_D}, got {d}")
    out = torch.empty((b, seq, d), dtype=x.dtype, device=x.device)
    n_rows = b * seq
    if n_rows == 0:
        return out
    block_d = next_power_of_2(d)
    block_m = rows_per_program(n_rows, block_d)
    grid = (cdiv(n_rows, block_m),)
    _modulated_layer_norm_kernel[grid](
        x, scale, shift, out,
        n_rows, seq, d,
        *x.stride(), *scale.stride(), *shift.stride(),
        eps,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps_for(block_m * block_d),
    )
    return out


def modulated_layer_norm_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                                   eps: float = 1e-6) -> torch.Tensor:
    """Pure-torch twin: the unfused models' ops, in the dtype promoted from x, scale and shift.

    With all three in one dtype this is the built-in DiT's and diffusers' AdaLayerNormZero line exactly; with a
    float32 scale/shift and a half-precision x it is Wan's (FP32LayerNorm on x.float(), float32 modulation).

    Args and returns: as `modulated_layer_norm`.
    """
    scale = modulation_view(scale, x, "scale")
    shift = modulation_view(shift, x, "shift")
    dtype = torch.promote_types(x.dtype, torch.promote_types(scale.dtype, shift.dtype))
    y = F.layer_norm(x if x.dtype == dtype else x.to(dtype), (x.shape[-1],), eps=eps)
    y = y * (1 + scale) + shift
    return y if y.dtype == x.dtype else y.to(x.dtype)


def modulated_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                         eps: float = 1e-6) -> torch.Tensor:
    """`LayerNorm(x) * (1 + scale) + shift`, LayerNorm without affine weights, over the last dim.

    Args:
        x: (B, L, D) activations, float32 / bfloat16 / float16, any strides.
        scale: (B, D) or (B, 1, D) per sample, or (B, L, D) per token; any float dtype (Wan keeps it float32).
            A leading 1 instead of B broadcasts over the batch.
        shift: same shapes as scale.
        eps: LayerNorm epsilon (1e-6 in DiT, Flux, Wan).

    Returns:
        (B, L, D) in x's dtype. The Triton path computes in float32 and rounds once; the reference rounds after
        each op in the promoted dtype as the unfused models do, so half-precision results differ by a few ulp.
    """
    if dispatch.use_triton(x, scale, shift):
        return modulated_layer_norm_fwd(x, scale, shift, eps)
    return modulated_layer_norm_reference(x, scale, shift, eps)
