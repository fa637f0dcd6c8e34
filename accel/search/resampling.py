"""Particle weights and resampling, shared by SMC / FK steering and entropic particle filtering.

All weights are handled as log-weights (B,) float64: normalising with logsumexp never overflows, whatever the
reward scale times lambda.
"""

from __future__ import annotations

import math

import torch

from accel.config import check_choice

RESAMPLERS = ("multinomial", "systematic")
TEMPERATURES = ("ess", "entropy", "base")


def normalize(logw: torch.Tensor) -> torch.Tensor:
    """Probabilities (B,) float64 from log-weights."""
    logw = logw.double()
    return torch.exp(logw - torch.logsumexp(logw, 0))


def ess(logw: torch.Tensor) -> float:
    """Effective sample size 1 / sum p^2, in [1, B]."""
    p = normalize(logw)
    return float(1.0 / (p * p).sum())


def normalized_entropy(p: torch.Tensor) -> float:
    """-sum p log p / log B in [0, 1] (1 = uniform). For B <= 2 the raw entropy, as its_hub does."""
    h = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return h / math.log(p.numel()) if p.numel() > 2 else h


def resample(p: torch.Tensor, n: int, method: str, generator: torch.Generator | None) -> torch.Tensor:
    """n ancestor indices (n,) long drawn with probabilities p (B,).

    systematic: one uniform u, points (u + k) / n: every index i gets floor(n p_i) or ceil(n p_i) copies (lower
    variance than multinomial, the ePF default). multinomial: n independent draws (FK steering).
    """
    check_choice("resampling", method, RESAMPLERS)
    device = generator.device if generator is not None else torch.device("cpu")
    p = p.double().to(device)
    if method == "multinomial":
        return torch.multinomial(p, n, replacement=True, generator=generator).cpu()
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=device).cpu()
    u = (u + torch.arange(n, dtype=torch.float64)) / n
    cdf = torch.cumsum(p.cpu(), 0)
    cdf[-1] = 1.0  # rounding must not leave the last point beyond the cdf
    return torch.searchsorted(cdf, u, right=True).clamp(max=p.numel() - 1)


def entropic_temperature(logw: torch.Tensor, progress: float, rule: str, kappa: float, early: float,
                         tau_max: float) -> float:
    """ePF's entropic annealing temperature tau >= 1 (Giannone et al., arXiv 2510.05825).

    tau = 1 unless the weights have collapsed (ESS / B < kappa) early in the run (progress < early); then
    "ess": tau = max(1, (B / ESS) (1 - progress)); "entropy": beta = H + (1 - H) progress, tau = max(1, 1 / beta);
    "base": tau = max(1, tau_max - progress). Resampling from softmax(logw / tau) keeps diversity.
    """
    check_choice("temperature rule", rule, TEMPERATURES)
    b = logw.numel()
    e = ess(logw)
    if e / b >= kappa or progress >= early:
        return 1.0
    if rule == "ess":
        return max(1.0, (b / e) * (1.0 - progress))
    if rule == "entropy":
        h = normalized_entropy(normalize(logw))
        beta = h + (1.0 - h) * progress
        return max(1.0, 1.0 / beta) if beta > 0 else float("inf")
    return max(1.0, tau_max - progress)
