"""Shape validation and launch heuristics shared by the kernel launchers."""

from __future__ import annotations

import torch

from accel.kernels._triton import interpreting, next_power_of_2

# Elements one program handles. On a GPU ~4K elements per program keeps enough programs in flight to saturate
# memory bandwidth (Liger-Kernel and the Triton layer-norm tutorial use the same order). The interpreter runs each
# program in Python, so there fewer, larger programs are much faster (0.2 s vs 3.7 s for a 4M-element add,
# shared/notes/environment-cpu.md).
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16


def tile_elements() -> int:
    """Target elements per program for the current Triton mode."""
    return INTERPRETER_TILE if interpreting() else GPU_TILE


def rows_per_program(n_rows: int, block_cols: int) -> int:
    """Power-of-two rows per program so that rows x block_cols is about one tile (at least 1 row)."""
    rows = max(1, tile_elements() // block_cols)  # both are powers of two, so rows is one too
    return min(rows, next_power_of_2(n_rows))


def num_warps_for(tile: int) -> int:
    """Warps for a tile of `tile` elements: more warps for wider rows (Liger-Kernel's calculate_settings)."""
    if tile >= 32768:
        return 16
    if tile >= 8192:
        return 8
    return 4


def modulation_view(t: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """A per-sample or per-token modulation tensor as a 3-D view that broadcasts against x (B, L, D).

    Args:
        t: (B, D) or (B, 1, D) per sample, (B, L, D) per token; a leading 1 instead of B broadcasts over the batch.
        x: (B, L, D) the tensor being modulated.
        name: argument name for error messages.

    Returns:
        A (B or 1, 1 or L, D) view of t, not expanded: the references broadcast it without materialising
        (B, L, D), the launchers call `.expand_as(x)` to get stride-0 strides. No copy is made.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, L, D), got shape {tuple(x.shape)}")
    b, seq, d = x.shape
    view = t[:, None, :] if t.ndim == 2 else t
    ok = (view.ndim == 3 and view.shape[0] in (1, b) and view.shape[1] in (1, seq) and view.shape[2] == d)
    if not ok:
        raise ValueError(f"{name} must be (B, D), (B, 1, D) or (B, L, D) with B={b}, L={seq}, D={d} "
                         f"(a leading 1 broadcasts over the batch), got {tuple(t.shape)}")
    return view


def step_param(s: torch.Tensor | float, x: torch.Tensor, name: str) -> torch.Tensor:
    """A per-sample or per-token step parameter (sigma, dt, g) as float32, shaped to broadcast against x.

    Args:
        s: a Python float, a 0-d tensor, or a tensor whose shape without trailing 1s is a prefix of x.shape:
            (B,) per sample, (B, L) per token of x (B, L, ...); (B, 1, 1, 1) also works.
        x: the state tensor.
        name: argument name for error messages.

    Returns:
        float32 on x's device with shape prefix + (1,) * (x.ndim - len(prefix)). Its flat version has R elements,
        and element i covers the x.numel() // R consecutive elements of x that share it.
    """
    s = torch.as_tensor(s, dtype=torch.float32, device=x.device)
    shape = list(s.shape)
    while shape and shape[-1] == 1:  # (B, 1, 1, 1) broadcasts like (B,)
        shape.pop()
    if tuple(shape) != tuple(x.shape[: len(shape)]):
        raise ValueError(f"{name} must be a float, 0-d, or shaped like a prefix of x's shape {tuple(x.shape)} "
                         f"((B,) per sample, (B, L) per token), got {tuple(s.shape)}")
    return s.reshape(*shape, *([1] * (x.ndim - len(shape))))


def flat_param(p: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A `step_param` as a contiguous (R,) vector and the number of x elements per entry (for flat kernels)."""
    flat = p.reshape(-1).contiguous()
    return flat, max(x.numel() // max(flat.numel(), 1), 1)
