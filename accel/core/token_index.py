"""Per-sample token selection: gather and scatter a tensor's tokens at (B, k) indices, for the samplers and
active-token forwards that compute only some tokens of each sample (accel.schedulers.hsa, accel.pipelines.*_hsa)."""

from __future__ import annotations

import torch


def _spread(index: torch.Tensor, ndim: int, dim: int, shape) -> torch.Tensor:
    """Token indices (B, k) laid along dim of an ndim-dimensional tensor and expanded to shape."""
    view = [index.shape[0]] + [1] * (ndim - 1)
    view[dim] = index.shape[1]
    return index.view(view).expand(shape)


def gather_tokens(t: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """t's tokens along dim (1: (B, L, ...), 2: e.g. (B, heads, L, head_dim)) at index (B, k)."""
    shape = list(t.shape)
    shape[dim] = index.shape[1]
    return torch.gather(t, dim, _spread(index, t.ndim, dim, shape))


def scatter_tokens(t: torch.Tensor, index: torch.Tensor, src: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """A copy of t with src's tokens written along dim at index (B, k)."""
    return t.scatter(dim, _spread(index, t.ndim, dim, src.shape), src)


def scatter_tokens_(t: torch.Tensor, index: torch.Tensor, src: torch.Tensor, dim: int = 1) -> None:
    """scatter_tokens in place (t may be a view: its base is written)."""
    t.scatter_(dim, _spread(index, t.ndim, dim, src.shape), src)


def other_tokens(active: torch.Tensor, n: int) -> torch.Tensor:
    """The token indices (B, n - k) of n not in active (B, k), ascending."""
    mask = torch.ones(active.shape[0], n, dtype=torch.bool, device=active.device).scatter(1, active, False)
    return torch.sort(torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :n - active.shape[1]],
                      dim=1).values
