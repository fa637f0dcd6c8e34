"""A weighted sum of rewards, and fitting its weights to a judge (the calibration idea of DLBS)."""

from __future__ import annotations

from typing import Literal

import torch

from accel.core.reward import Reward
from accel.rewards.base import evaluate


class WeightedReward:
    """sum_k w_k * r_k(samples, prompts), each term checked (shape, finite) on its own.

    DLBS (Oshima et al., arXiv 2501.19252) weights several metrics so that the sum agrees with a VLM judge or human
    ratings; `fit_weights` does that fit from scores on a calibration set. All terms must read the same input.
    """

    def __init__(self, terms: list[tuple[Reward, float]]):
        if not terms:
            raise ValueError("a weighted reward needs at least one (reward, weight) term")
        reads = {r.reads for r, _ in terms}
        if len(reads) != 1:
            raise ValueError(f"all terms must read the same input, got {sorted(reads)}")
        for _, w in terms:
            if not isinstance(w, (int, float)) or w != w:
                raise ValueError(f"weights must be numbers, got {w!r}")
        self.terms = list(terms)
        self.reads: Literal["pixels", "latents"] = reads.pop()

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = torch.zeros(samples.shape[0])
        for reward, w in self.terms:
            total = total + w * evaluate(reward, samples, prompts).cpu()
        return total


def fit_weights(term_scores: torch.Tensor, target: torch.Tensor, nonnegative: bool = True) -> torch.Tensor:
    """Least-squares weights w (K,) with term_scores (N, K) @ w ~ target (N,), e.g. a judge's scores.

    nonnegative: clamp negative weights to 0 and refit the rest (one active-set pass: a metric that anti-correlates
    with the judge is dropped rather than rewarded negatively, as DLBS's shipped weights are all >= 0).
    """
    a, b = term_scores.double(), target.double()
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"need term_scores (N, K) and target (N,), got {tuple(a.shape)} and {tuple(b.shape)}")
    w = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    if nonnegative and (w < 0).any():
        keep = w > 0
        w = torch.zeros_like(w)
        if keep.any():
            w[keep] = torch.linalg.lstsq(a[:, keep], b[:, None]).solution[:, 0].clamp(min=0)
    return w.float()
