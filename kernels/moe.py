"""Grouped SwiGLU experts for expert-choice MoE layers: every expert's FFN in one launch.

Under expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing") every expert takes
exactly C tokens, so the routed tokens, permuted into expert-contiguous order, form a dense (E, N, D) batch with
N = batch * C. diffusers' Nucleus layer runs a Python loop over the E experts (two matmuls and three element-wise
ops each); here one kernel computes `silu(x @ W_gate) * (x @ W_up)` for all experts, the gate and up products
sharing each tile of x and never written to memory, and a second one computes `h @ W_down` with the routing weight
of each row applied in float32 before the single rounding to the output dtype.

Tiers: `_swiglu_up_kernel`, `_down_weighted_kernel` (Triton) -> `grouped_swiglu_fwd` (launcher) ->
`grouped_swiglu` (public, dispatches); `grouped_swiglu_reference` is the pure-torch twin (two batched matmuls, which
on CPU are several times faster than the per-expert loop at small widths). Forward only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from accel.kernels import dispatch
from accel.kernels._triton import cdiv, check_launchable, interpreting, kernel, next_power_of_2, tl


@kernel
def _swiglu_up_kernel(
    # Pointers: x (E, N, D), w (E, D, 2I) with gate columns [0, I) and up columns [I, 2I), h (E, N, I)
    x_ptr, w_ptr, h_ptr,
    n, d, inter,
    stride_xe, stride_xn, stride_xd,
    stride_we, stride_wd, stride_wi,
    # Meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    e = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < n, cols < inter
    x_base = x_ptr + e * stride_xe + rows[:, None] * stride_xn
    w_base = w_ptr + e * stride_we + cols[None, :] * stride_wi
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d
        a = tl.load(x_base + ks[None, :] * stride_xd, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(w_base + ks[:, None] * stride_wd, mask=w_mask, other=0.0)
        w_up = tl.load(w_base + ks[:, None] * stride_wd + inter * stride_wi, mask=w_mask, other=0.0)
        if UPCAST:
            a, w_gate, w_up = a.to(tl.float32), w_gate.to(tl.float32), w_up.to(tl.float32)
        gate = tl.dot(a, w_gate, gate, input_precision=PRECISION)
        up = tl.dot(a, w_up, up, input_precision=PRECISION)
    h = gate * tl.sigmoid(gate) * up
    out = h_ptr + e * n * inter + rows[:, None] * inter + cols[None, :]
    tl.store(out, h.to(h_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@kernel
def _down_weighted_kernel(
    # Pointers: h (E, N, I) contiguous, w (E, I, D), weight (E * N,) float32 or a dummy, out (E, N, D)
    h_ptr, w_ptr, weight_ptr, out_ptr,
    n, inter, d,
    stride_we, stride_wi, stride_wd,
    # Meta-parameters
    HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    e = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < n, cols < d
    h_base = h_ptr + e * n * inter + rows[:, None] * inter
    w_base = w_ptr + e * stride_we + cols[None, :] * stride_wd
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < inter
        a = tl.load(h_base + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + ks[:, None] * stride_wi, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_WEIGHT:
        acc = acc * tl.load(weight_ptr + e * n + rows, mask=row_ok, other=0.0)[:, None]
    out = out_ptr + e * n * d + rows[:, None] * d + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _check(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weight: torch.Tensor | None) -> None:
    if x.ndim != 3 or gate_up.ndim != 3 or down.ndim != 3:
        raise ValueError(f"x, gate_up and down must be 3-D, got {tuple(x.shape)}, {tuple(gate_up.shape)}, "
                         f"{tuple(down.shape)}")
    e, n, d = x.shape
    inter = down.shape[1]
    if gate_up.shape != (e, d, 2 * inter) or down.shape != (e, inter, d):
        raise ValueError(f"for x (E, N, D) = {tuple(x.shape)} expected gate_up (E, D, 2I) and down (E, I, D), got "
                         f"{tuple(gate_up.shape)} and {tuple(down.shape)}")
    if weight is not None and weight.shape not in ((e, n), (e * n,)):
        raise ValueError(f"weight must be (E, N) = ({e}, {n}) or (E * N,), got {tuple(weight.shape)}")


def _tiles(n: int, cols: int, k: int, wide: bool) -> dict:
    """Tile sizes and launch options. tl.dot needs >= 16 in each dimension. The interpreter runs each program in
    Python, so there a few large tiles are fastest. On a GPU: 128-row tiles once an expert has that many tokens (as
    Nucleus-Image's experts do at 1024 px), 64 columns where two accumulators share the registers (gate and up), 128
    where one does. Chosen from the shapes, not yet tuned on a GPU."""
    if interpreting():
        return dict(BLOCK_M=max(16, min(next_power_of_2(n), 128)), BLOCK_N=max(16, min(next_power_of_2(cols), 128)),
                    BLOCK_K=max(16, min(next_power_of_2(k), 64)))
    bm = 128 if n >= 128 else max(16, min(next_power_of_2(n), 64))
    bn = max(16, min(next_power_of_2(cols), 128 if wide else 64))
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64 if k >= 64 else max(16, next_power_of_2(k)),
                num_warps=8 if bm * bn >= 128 * 128 else 4, num_stages=3)


def grouped_swiglu_fwd(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `grouped_swiglu`.
    """
    check_launchable(x, gate_up, down, weight)
    _check(x, gate_up, down, weight)
    e, n, d = x.shape
    inter = down.shape[1]
    out = torch.empty((e, n, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    gate_up, down = gate_up.to(x.dtype), down.to(x.dtype)
    # float32 matmuls in full precision, as torch's default (TF32 off) computes them.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    # Triton's CPU interpreter gives wrong products for bfloat16 dot operands (Triton 3.9; numpy has no bfloat16):
    # there the tiles are multiplied in float32. Compiled kernels keep the native bfloat16 tensor-core dot.
    upcast = interpreting() and x.dtype == torch.bfloat16
    h = torch.empty((e, n, inter), dtype=x.dtype, device=x.device)
    meta = _tiles(n, inter, d, wide=False)
    grid = (cdiv(n, meta["BLOCK_M"]), cdiv(inter, meta["BLOCK_N"]), e)
    _swiglu_up_kernel[grid](x, gate_up, h, n, d, inter, *x.stride(), *gate_up.stride(), PRECISION=precision,
                            UPCAST=upcast, **meta)
    weight_flat = weight.reshape(-1).float().contiguous() if weight is not None else out
    meta = _tiles(n, d, inter, wide=True)
    grid = (cdiv(n, meta["BLOCK_M"]), cdiv(d, meta["BLOCK_N"]), e)
    _down_weighted_kernel[grid](h, down, weight_flat, out, n, inter, d, *down.stride(),
                                HAS_WEIGHT=weight is not None, PRECISION=precision, UPCAST=upcast, **meta)
    return out


def grouped_swiglu_reference(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch twin: diffusers' SwiGLUExperts arithmetic as two batched matmuls, then the routing weight in
    float32 and one rounding, as NucleusMoELayer applies it.

    Args and returns: as `grouped_swiglu`.
    """
    _check(x, gate_up, down, weight)
    gate, up = torch.bmm(x, gate_up.to(x.dtype)).chunk(2, dim=-1)
    inplace = not torch.is_grad_enabled()  # without autograd, reuse buffers (same arithmetic, fewer allocations)
    h = F.silu(gate)
    out = torch.bmm(h.mul_(up) if inplace else h * up, down.to(x.dtype))
    if weight is None:
        return out
    weight = weight.reshape(out.shape[:2]).unsqueeze(-1).float()
    if inplace and out.dtype == torch.float32:
        return out.mul_(weight)
    return (out.float() * weight).to(x.dtype)


def grouped_swiglu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Every expert's SwiGLU FFN on its own equal-sized group of tokens, optionally scaled per row.

    Args:
        x: (E, N, D) tokens in expert-contiguous order (N tokens per expert), float32 / bfloat16 / float16.
        gate_up: (E, D, 2I) packed gate and up projections (diffusers' SwiGLUExperts.gate_up_proj layout).
        down: (E, I, D) down projections (SwiGLUExperts.down_proj).
        weight: optional routing weights (E, N) or (E * N,), applied in float32 to each output row.

    Returns:
        (E, N, D) in x's dtype: `(silu(x @ gate) * (x @ up)) @ down`, times weight. The Triton path accumulates in
        float32 and keeps the SwiGLU product in float32 before rounding it once; the reference rounds as torch's
        matmuls do, like diffusers' loop.
    """
    if dispatch.use_triton(x, gate_up, down, weight):
        return grouped_swiglu_fwd(x, gate_up, down, weight)
    return grouped_swiglu_reference(x, gate_up, down, weight)
