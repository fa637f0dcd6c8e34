"""Toy denoisers with exact answers, shared by the sampler and search tests.

GaussianFlow: data ~ N(MU, S^2) in every coordinate. Under the linear path x_sigma = (1 - sigma) x0 + sigma eps
the marginal is N((1 - sigma) MU, (1 - sigma)^2 S^2 + sigma^2), and the probability-flow ODE is the affine transport
between them, so the velocity and the endpoint of every trajectory are known in closed form.
"""

import torch

from accel.core import Cond, Denoiser, TokenLayout

MU, S = 0.7, 0.5


def mean(sigma):
    return (1 - sigma) * MU


def var(sigma):
    return ((1 - sigma) * S) ** 2 + sigma**2


def exact_endpoint(x1):
    return MU + S * x1  # the flow maps noise x1 ~ N(0, 1) affinely onto the data


class GaussianFlow(Denoiser):
    """The exact velocity for Gaussian data; sigma may be 0-d or per sample (B,)."""

    family = "gaussian"
    call_args = frozenset()

    def __init__(self):
        super().__init__(pipe=None)

    def prepare(self, **call):
        raise NotImplementedError

    def _velocity(self, x, sigma, cond):
        t = torch.as_tensor(sigma, dtype=torch.float64)
        t = t.view(-1, *([1] * (x.ndim - 1))) if t.ndim == 1 else t
        dvar_half = -(1 - t) * S**2 + t  # d/dsigma of var / 2
        return (-MU + dvar_half / var(t) * (x.double() - mean(t))).to(x.dtype)

    def expand_cond(self, cond, n):
        return Cond(n, cond.passes)

    def decode(self, x, prepared):
        return x

    def token_layout(self, x):
        return TokenLayout(1, 1, x.shape[-1])
