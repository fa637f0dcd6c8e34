"""Max softmax probability and argmax over a large vocabulary, without materialising the probabilities.

Diffusion language models (LLaDA, MDLM-style decoding) unmask the positions whose predicted token is most
confident: per row, conf = max_j softmax(logits / T)_j and the argmax. Unfused, softmax writes a float32
(R, V) tensor (V = 126464 for LLaDA) that is then reduced; the kernel streams the logits once with an online
softmax (Milakov & Gimelshein 2018): a running max m and a running sum s of exp(z - m) across vocabulary tiles,
so conf = 1 / s and the argmax is the index of the final m.

Tiers: `_confidence_argmax_kernel` -> `confidence_argmax_fwd` (launcher) -> `confidence_argmax` (public,
dispatches); `confidence_argmax_reference` is the pure-torch twin. Forward only (decoding needs no gradient).
"""

from __future__ import annotations

import torch

from accel.kernels import dispatch
from accel.kernels._common import num_warps_for
from accel.kernels._triton import cdiv, check_launchable, interpreting, kernel, next_power_of_2, tl

# Elements per vocabulary tile: 4096 logits stream well on a GPU; the interpreter wants few, large tiles.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16


@kernel
def _confidence_argmax_kernel(
    # Pointers: logits rows (R, V); outputs (R,)
    logits_ptr, conf_ptr, index_ptr,
    # Sizes and strides
    n_rows, v, stride_r, stride_v, inv_temperature,
    # Meta-parameters: BLOCK_R rows per program (1 on GPUs for a large V), BLOCK_V vocabulary entries per tile
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    base = logits_ptr + rows[:, None] * stride_r
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_R,), -float("inf"), tl.float32)  # running max of z = logits / T
    s = tl.zeros((BLOCK_R,), tl.float32)  # running sum of exp(z - m)
    best = tl.zeros((BLOCK_R,), tl.int64)  # index of m
    for start in range(0, v, BLOCK_V):
        mask = row_ok[:, None] & (start + cols < v)[None, :]
        z = tl.load(base + (start + cols)[None, :] * stride_v, mask=mask, other=-float("inf"))
        # Rows past the end read 0 instead of -inf, so that their (discarded) statistics are not inf - inf.
        z = tl.where(row_ok[:, None], z.to(tl.float32) * inv_temperature, 0.0)
        tile_max, tile_arg = tl.max(z, axis=1, return_indices=True, return_indices_tie_break_left=True)
        m_new = tl.maximum(m, tile_max)
        # While a row has seen only -inf, exp(-inf - -inf) would be NaN (a first tile masked out by top-k or a
        # restricted vocabulary): subtract 0 instead, so s stays 0 and later finite tiles start it afresh.
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        best = tl.where(tile_max > m, start + tile_arg.to(tl.int64), best)  # strict: ties keep the first index
        m = m_new
    # All -inf rows (s = 0) and NaN rows give NaN, as softmax does (not 1 / 0 = inf).
    tl.store(conf_ptr + rows, 1.0 / tl.where(s > 0, s, float("nan")), mask=row_ok)
    tl.store(index_ptr + rows, best, mask=row_ok)


def _check(logits: torch.Tensor, temperature: float) -> None:
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be (..., V) with V >= 1, got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def confidence_argmax_fwd(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Args and returns: as `confidence_argmax`.
    """
    check_launchable(logits)
    _check(logits, temperature)
    rows = logits.reshape(-1, logits.shape[-1])  # a view for the usual contiguous (B, L, V)
    n_rows, v = rows.shape
    conf = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    index = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
    if n_rows:
        tile = INTERPRETER_TILE if interpreting() else GPU_TILE
        block_v = min(tile, next_power_of_2(v))
        block_r = min(tile // block_v, next_power_of_2(n_rows))  # several rows per program only for a small V
        _confidence_argmax_kernel[(cdiv(n_rows, block_r),)](
            rows, conf, index,
            n_rows, v, rows.stride(0), rows.stride(1), 1.0 / temperature,
            BLOCK_R=block_r, BLOCK_V=block_v, num_warps=num_warps_for(block_r * block_v),
        )
    shape = logits.shape[:-1]
    return conf.view(shape), index.view(shape)


def confidence_argmax_reference(logits: torch.Tensor, temperature: float = 1.0
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin: float32 softmax (materialised), its max, and logits.argmax.

    Args and returns: as `confidence_argmax`.
    """
    _check(logits, temperature)
    probs = torch.softmax(logits.float() * (1.0 / temperature), dim=-1)
    return probs.amax(dim=-1), logits.argmax(dim=-1)


def confidence_argmax(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the largest softmax probability of logits / temperature, and its index.

    Args:
        logits: (..., V) any float dtype, any strides (rows are reshaped, copied only if they cannot be viewed).
        temperature: > 0; argmax does not depend on it.

    Returns:
        conf: (...) float32 in (0, 1]. index: (...) int64, the first maximal index on ties (as torch.argmax).
        Rows containing NaN, or only -inf, give NaN conf and an unspecified index.
    """
    if dispatch.use_triton(logits):
        return confidence_argmax_fwd(logits, temperature)
    return confidence_argmax_reference(logits, temperature)
