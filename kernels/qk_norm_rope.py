"""Query/key RMSNorm fused with rotary position embedding, in the layouts Flux, Wan and the built-in DiT use.

Unfused, attention normalises q and k (one read, one write each) and then rotates them (another read and write,
with float32 temporaries); the kernel reads each once and writes each once, keeping the normalised values in
float32 registers. q and k are two launches of the same kernel: each launch is already the minimal traffic, and
merging them would save one launch latency, not bandwidth.

Layouts (all from diffusers 0.42, checked against it in tests/kernels/test_fused_kernels.py):
- per-head norm, `qk_norm_rope`: q, k (B, L, H, Dh) (`seq_dim=1`: FluxAttnProcessor, which normalises the
  unflattened heads and calls apply_rotary_emb(..., sequence_dim=1)) or (B, H, L, Dh) (`seq_dim=2`: the built-in
  DiT, and Flux in older diffusers). Norm weight (Dh,).
- norm across heads, `qk_norm_across_heads_rope`: q, k (B, L, H * Dh) normalised over all H * Dh features before
  the heads are split (WanAttnProcessor, qk_norm="rms_norm_across_heads"); rotary per head of Dh. Weight (H*Dh,).

Rotary convention: diffusers' `apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-1)`: features
form interleaved pairs (x[2i], x[2i+1]); cos, sin are (L, Dh) with each frequency repeated for both members of a
pair (`repeat_interleave_real=True`, as FluxPosEmbed and WanRotaryPosEmbed build them):
    out[2i]   = x[2i]   * cos[2i]   - x[2i+1] * sin[2i]
    out[2i+1] = x[2i+1] * cos[2i+1] + x[2i]   * sin[2i+1]
Wan's processor reads cos[0::2] and sin[1::2] instead, which is the same for repeated frequencies.

Tiers: `_rms_norm_rope_kernel` -> `rms_norm_rope_fwd` (launcher, on a canonical 4-D view) -> `qk_norm_rope` /
`qk_norm_across_heads_rope` (public, dispatch); `rms_norm_rope_reference` is the pure-torch twin. Forward only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from accel.kernels import dispatch
from accel.kernels._common import num_warps_for, rows_per_program
from accel.kernels._triton import cdiv, check_launchable, kernel, next_power_of_2, tl

MAX_N = 1 << 15  # a normalised row lives in registers (Wan 14B: 5120 features)


@kernel
def _rms_norm_rope_kernel(
    # Pointers (w_ptr, cos_ptr, sin_ptr are unused when the matching flag is off)
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
    # Sizes: rows are indexed (i0, i1, i2) with sizes (n0, n1, n2); each row has n_cols features normalised
    # together; the rotary period is head_dim (n_cols is a multiple of it)
    n_rows, n1, n2, n_cols, head_dim,
    # Strides in elements; cos and sin share theirs, 0 along broadcast dims
    stride_x0, stride_x1, stride_x2, stride_xc,
    stride_o0, stride_o1, stride_o2, stride_oc,
    stride_c0, stride_c1, stride_c2, stride_cc,
    eps,
    # Meta-parameters
    HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: offsets can pass 2^31
    i0 = rows // (n1 * n2)
    i1 = (rows // n2) % n1
    i2 = rows % n2
    # Each program loads the even and the odd member of every rotary pair as two (BLOCK_M, BLOCK_P) tiles, so the
    # rotation needs no in-register shuffle; both loads touch the same cache lines.
    even = 2 * tl.arange(0, BLOCK_P)
    odd = even + 1
    row_ok = (rows < n_rows)[:, None]
    mask_e = row_ok & (even < n_cols)[None, :]
    mask_o = row_ok & (odd < n_cols)[None, :]

    x_row = (i0 * stride_x0 + i1 * stride_x1 + i2 * stride_x2)[:, None]
    xe = tl.load(x_ptr + x_row + even[None, :] * stride_xc, mask=mask_e, other=0.0).to(tl.float32)
    xo = tl.load(x_ptr + x_row + odd[None, :] * stride_xc, mask=mask_o, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(xe * xe, axis=1) + tl.sum(xo * xo, axis=1)) / n_cols + eps)
    ye = xe * rstd[:, None]
    yo = xo * rstd[:, None]
    if HAS_WEIGHT:
        ye = ye * tl.load(w_ptr + even, mask=even < n_cols, other=0.0).to(tl.float32)[None, :]
        yo = yo * tl.load(w_ptr + odd, mask=odd < n_cols, other=0.0).to(tl.float32)[None, :]
    if HAS_ROPE:
        c_row = (i0 * stride_c0 + i1 * stride_c1 + i2 * stride_c2)[:, None]
        d_e = ((even % head_dim) * stride_cc)[None, :]
        d_o = ((odd % head_dim) * stride_cc)[None, :]
        cos_e = tl.load(cos_ptr + c_row + d_e, mask=mask_e, other=0.0).to(tl.float32)
        cos_o = tl.load(cos_ptr + c_row + d_o, mask=mask_o, other=0.0).to(tl.float32)
        sin_e = tl.load(sin_ptr + c_row + d_e, mask=mask_e, other=0.0).to(tl.float32)
        sin_o = tl.load(sin_ptr + c_row + d_o, mask=mask_o, other=0.0).to(tl.float32)
        ye, yo = ye * cos_e - yo * sin_e, yo * cos_o + ye * sin_o

    o_row = (i0 * stride_o0 + i1 * stride_o1 + i2 * stride_o2)[:, None]
    tl.store(out_ptr + o_row + even[None, :] * stride_oc, ye.to(out_ptr.dtype.element_ty), mask=mask_e)
    tl.store(out_ptr + o_row + odd[None, :] * stride_oc, yo.to(out_ptr.dtype.element_ty), mask=mask_o)


def _check_view(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor | None,
                sin: torch.Tensor | None, out: torch.Tensor) -> None:
    """Validate the canonical view: x, out (n0, n1, n2, N); cos, sin (n0, n1, n2, Dh) views or both None."""
    if x.ndim != 4 or out.shape != x.shape:
        raise ValueError(f"x and out must be one 4-D shape, got {tuple(x.shape)} and {tuple(out.shape)}")
    n = x.shape[-1]
    if weight is not None and weight.shape != (n,):
        raise ValueError(f"norm weight must be ({n},), got {tuple(weight.shape)}")
    if (cos is None) != (sin is None):
        raise ValueError("pass both cos and sin, or neither")
    if cos is None:
        return
    dh = cos.shape[-1]
    if cos.shape != sin.shape or cos.shape[:3] != x.shape[:3] or dh % 2 or n % dh:
        raise ValueError(f"cos and sin must broadcast to {tuple(x.shape[:3])} + (Dh,) with an even Dh dividing "
                         f"{n}, got {tuple(cos.shape)} and {tuple(sin.shape)}")


def rms_norm_rope_fwd(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor | None,
                      sin: torch.Tensor | None, eps: float, out: torch.Tensor) -> torch.Tensor:
    """Launch the Triton kernel on canonical views (CUDA, or CPU under TRITON_INTERPRET=1).

    Args:
        x: (n0, n1, n2, N) any strides; each (i0, i1, i2) row of N features is normalised.
        weight: (N,) RMSNorm weight, or None.
        cos, sin: (n0, n1, n2, Dh) float views (stride 0 where broadcast), N a multiple of Dh; or both None.
        eps: RMSNorm epsilon.
        out: (n0, n1, n2, N) written in place (any strides, may alias nothing else).

    Returns:
        out.
    """
    check_launchable(x, weight, cos, sin, out)
    _check_view(x, weight, cos, sin, out)
    n0, n1, n2, n = x.shape
    if n > MAX_N:
        raise ValueError(f"the normalised row must have <= {MAX_N} features, got {n}")
    n_rows = n0 * n1 * n2
    if n_rows == 0:
        return out
    block_p = next_power_of_2(cdiv(n, 2))
    block_m = rows_per_program(n_rows, 2 * block_p)
    has_rope = cos is not None
    cos_strides = cos.stride() if has_rope else (0, 0, 0, 0)
    if has_rope and sin.stride() != cos_strides:
        raise ValueError(f"cos and sin must share strides, got {cos.stride()} and {sin.stride()}")
    _rms_norm_rope_kernel[(cdiv(n_rows, block_m),)](
        x, weight if weight is not None else x, cos if has_rope else x, sin if has_rope else x, out,
        n_rows, n1, n2, n, cos.shape[-1] if has_rope else n,
        *x.stride(), *out.stride(), *cos_strides,
        eps,
        HAS_WEIGHT=weight is not None, HAS_ROPE=has_rope, BLOCK_M=block_m, BLOCK_P=block_p,
        num_warps=num_warps_for(2 * block_m * block_p),
    )
    return out


def rms_norm_rope_reference(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor | None,
                            sin: torch.Tensor | None, eps: float, rope_dtype: torch.dtype = torch.float32
                            ) -> torch.Tensor:
    """Pure-torch twin on the canonical views: torch.nn.RMSNorm, then the rotation as diffusers computes it.

    Args: as `rms_norm_rope_fwd` (without out), plus rope_dtype: the dtype of the rotation arithmetic, which
        differs by family upstream: float32 in apply_rotary_emb (Flux), the promoted dtype of q and the tables in
        WanAttnProcessor (bfloat16 when the model, and so its rotary buffers, were cast to bfloat16).

    Returns:
        (n0, n1, n2, N) in x's dtype.
    """
    y = F.rms_norm(x, (x.shape[-1],), weight, eps)  # what nn.RMSNorm.forward calls, in x's dtype
    if cos is None:
        return y
    dh = cos.shape[-1]
    heads = y.unflatten(-1, (-1, dh))  # (n0, n1, n2, G, Dh)
    real, imag = heads.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over the G heads of a row
    return (heads.to(rope_dtype) * cos + rotated.to(rope_dtype) * sin).to(x.dtype).flatten(-2)


def _rope_tables(cos: torch.Tensor | None, sin: torch.Tensor | None, seq_len: int, device: torch.device):
    """cos, sin as contiguous (L, Dh) tables (tiny) in their own dtype, so that their broadcast views share
    strides; the kernel computes in float32 whatever their dtype."""
    if (cos is None) != (sin is None):
        raise ValueError("pass both cos and sin, or neither")
    if cos is None:
        return None, None
    cos = cos.reshape(-1, cos.shape[-1]) if cos.ndim != 2 else cos  # Wan passes (1, L, 1, Dh)
    sin = sin.reshape(-1, sin.shape[-1]) if sin.ndim != 2 else sin
    if cos.shape[0] != seq_len or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must be (L, Dh) with L={seq_len}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    return cos.to(device).contiguous(), sin.to(device).contiguous()


def _apply(x4: torch.Tensor, weight, cos4, sin4, eps: float, out4: torch.Tensor | None,
           rope_dtype: torch.dtype) -> torch.Tensor:
    """Dispatch one tensor: Triton into out4 (allocated if None), or the reference (copied into out4 if given)."""
    if dispatch.use_triton(x4, weight, cos4):
        return rms_norm_rope_fwd(x4, weight, cos4, sin4, eps, torch.empty_like(x4) if out4 is None else out4)
    y = rms_norm_rope_reference(x4, weight, cos4, sin4, eps, rope_dtype)
    return y if out4 is None else out4.copy_(y)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                 cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, eps: float = 1e-6,
                 seq_dim: int = 1, out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k, then rotary embedding (Flux, the built-in DiT).

    Args:
        q: (B, L, H, Dh) with seq_dim=1 (diffusers' Flux), or (B, H, L, Dh) with seq_dim=2; any strides;
            float32 / bfloat16 / float16.
        k: like q (its L may differ from q's when there is no rotary embedding, as in cross-attention).
        q_weight, k_weight: (Dh,) RMSNorm weights (nn.RMSNorm.weight), or None.
        cos, sin: (L, Dh) rotary tables in diffusers' use_real=True, use_real_unbind_dim=-1 convention, any float
            dtype (the rotation runs in float32, as apply_rotary_emb); or both None for the norm alone.
        eps: RMSNorm epsilon (Flux 1e-6).
        seq_dim: 1 or 2, where L sits (diffusers' apply_rotary_emb `sequence_dim`).
        out: optional (q_out, k_out) of q's and k's shapes to write into (e.g. slices of a concatenated buffer).

    Returns:
        (q_out, k_out) in q's and k's dtypes. The Triton path keeps the normalised values in float32 before the
        rotation; the reference rounds to the input dtype in between, as diffusers does.
    """
    if seq_dim not in (1, 2):
        raise ValueError(f"seq_dim must be 1 (B, L, H, Dh) or 2 (B, H, L, Dh), got {seq_dim}")
    results = []
    for i, (x, weight) in enumerate(((q, q_weight), (k, k_weight))):
        if x.ndim != 4:
            raise ValueError(f"q and k must be 4-D (B, L, H, Dh) or (B, H, L, Dh), got {tuple(x.shape)}")
        c, s = _rope_tables(cos, sin, x.shape[seq_dim], x.device)
        if c is not None:
            table = (slice(None), None) if seq_dim == 1 else (None, slice(None))
            c, s = (t[(None, *table)].expand(*x.shape[:3], t.shape[-1]) for t in (c, s))
        results.append(_apply(x, weight, c, s, eps, None if out is None else out[i], torch.float32))
    return results[0], results[1]


def qk_norm_across_heads_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None,
                              k_weight: torch.Tensor | None, cos: torch.Tensor | None = None,
                              sin: torch.Tensor | None = None, eps: float = 1e-6
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q and k over all heads' features, then rotary embedding per head (Wan).

    Args:
        q: (B, L, H * Dh) projections before the heads are split; any strides; float32 / bfloat16 / float16.
        k: (B, L_k, H * Dh); L_k may differ from L when there is no rotary embedding (Wan's cross-attention).
        q_weight, k_weight: (H * Dh,) RMSNorm weights, or None.
        cos, sin: (L, Dh) rotary tables (or (1, L, 1, Dh) as WanRotaryPosEmbed returns them), interleaved-pair
            convention (see the module docstring); Dh is the head dim. Both None for the norm alone.
        eps: RMSNorm epsilon (Wan 1e-6).

    Returns:
        (q_out, k_out), (B, L, H * Dh) each, in q's and k's dtypes; unflatten(2, (H, -1)) splits the heads. The
        Triton path rotates in float32; the reference in the promoted dtype of q and cos, as WanAttnProcessor.
    """
    results = []
    for x, weight in ((q, q_weight), (k, k_weight)):
        if x.ndim != 3:
            raise ValueError(f"q and k must be (B, L, H * Dh), got {tuple(x.shape)}")
        x4 = x[:, :, None, :]  # (B, L, 1, H*Dh): one normalised row per token
        c, s = _rope_tables(cos, sin, x.shape[1], x.device)
        if c is not None:
            c, s = (t[None, :, None, :].expand(*x4.shape[:3], t.shape[-1]) for t in (c, s))
        rope_dtype = x.dtype if c is None else torch.promote_types(x.dtype, c.dtype)  # as WanAttnProcessor
        results.append(_apply(x4, weight, c, s, eps, None, rope_dtype).squeeze(2))
    return results[0], results[1]
