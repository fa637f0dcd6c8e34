"""Stochastic sampling for flow models: the reverse SDE with the flow ODE's marginals, and the linear -> VP
interpolant conversion.

Implements part 1 and 2 of Kim et al., "Inference-Time Scaling for Flow Models via Stochastic Generation and
Rollover Budget Forcing" (RBF, arXiv 2503.19385), written from the paper's equations.

Time. A sampler here runs in the time r of an interpolant x_r = alpha_r x0 + sigma_r eps, r in [0, 1], 1 = noise.
For the linear interpolant (alpha = 1 - r, sigma = r) r *is* accel's sigma (accel.core.flow). For the VP interpolant
the model is still called in its own flow time: the flow sigma t_r with the same signal-to-noise ratio,
alpha_t / sigma_t = alpha_r / sigma_r, i.e. t_r = sigma_r / (alpha_r + sigma_r), on the rescaled latent x / s_r with
s_r = alpha_r + sigma_r (closed form because the source is linear).

SDE. For any diffusion coefficient g_r the reverse SDE

    dx = [v_r(x) - g_r^2 / 2 * score_r(x)] dr + g_r dW,     integrated from r = 1 down to 0,

has the ODE's marginals (add g^2/2 * (score term - Laplacian) = 0 to the Fokker-Planck equation). The
Euler-Maruyama step with positive step dr = r - r_next and z ~ N(0, I) is

    x_next = x + (r_next - r) * (v - g^2 / 2 * score) + g * sqrt(dr) * z.

v and the score come from one denoiser call through the posterior means (x0_hat, eps_hat):
v = alpha'_r x0_hat + sigma'_r eps_hat and score = -eps_hat / sigma_r. This equals the paper's closed form
v_bar = (s'/s) x + s t' u(x / s, t) (tests/schedulers/test_sde.py checks it) and needs no derivative of t_r.

The step into r = 0 is deterministic and returns x0_hat: for the linear interpolant that is exactly the Euler step
to 0; for VP it is the posterior mean (an Euler step in r would not land on the data manifold). So a run over
N + 1 grid points costs N denoiser calls, as the ODE.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from accel.config import check_choice
from accel.core.denoiser import Cond, Denoiser
from accel.core.flow import velocity_to_eps, velocity_to_x0
from accel.core.grid import TimeGrid
from accel.schedulers.flow import euler_update

INTERPOLANTS = ("linear", "vp")
DIFFUSIONS = ("square", "linear", "constant", "sigma", "zero", "renoise")
GRIDS = ("pipeline", "rbf")


# ---------------------------------------------------------------------------------------------------------------
# Interpolants
# ---------------------------------------------------------------------------------------------------------------


class Interpolant(ABC):
    """x_r = alpha(r) x0 + sigma(r) eps with r in [0, 1] (1 = noise). r: a float or a tensor; float64 inside."""

    name: str

    @abstractmethod
    def alpha(self, r: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def sigma(self, r: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def d_alpha(self, r: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def d_sigma(self, r: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def from_flow_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The r whose signal-to-noise ratio equals the linear flow's at sigma t (inverse of flow_time)."""

    def flow_time(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, s): the model is called at flow sigma t on x / s. SNR matching with the linear source."""
        a, s = self.alpha(r), self.sigma(r)
        return s / (a + s), a + s


class LinearInterpolant(Interpolant):
    """The rectified-flow path alpha = 1 - r, sigma = r: r is accel's sigma, no conversion."""

    name = "linear"

    def alpha(self, r):
        return 1 - _f64(r)

    def sigma(self, r):
        return _f64(r)

    def d_alpha(self, r):
        return torch.full_like(_f64(r), -1.0)

    def d_sigma(self, r):
        return torch.ones_like(_f64(r))

    def from_flow_sigma(self, t):
        return _f64(t)

    def flow_time(self, r):
        r = _f64(r)
        return r, torch.ones_like(r)


class VPInterpolant(Interpolant):
    """Variance-preserving path with a linear beta schedule (beta_min=0.1, beta_max=20, as RBF and DDPM).

    B(r) = r^2 (beta_max - beta_min) / 2 + r beta_min, alpha = exp(-B / 2), sigma = sqrt(1 - exp(-B)).
    Note alpha(1) = 0.0066, not 0: r = 1 is flow sigma 0.9934; the start latent N(0, I) is used there (as RBF does).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def _b(self, r):
        r = _f64(r)
        return 0.5 * r**2 * (self.beta_max - self.beta_min) + r * self.beta_min

    def _db(self, r):
        return _f64(r) * (self.beta_max - self.beta_min) + self.beta_min

    def alpha(self, r):
        return torch.exp(-0.5 * self._b(r))

    def sigma(self, r):
        # -expm1(-B) keeps precision near r = 0, where 1 - exp(-B) cancels.
        return torch.sqrt(-torch.expm1(-self._b(r)))

    def d_alpha(self, r):
        return -0.5 * self._db(r) * self.alpha(r)

    def d_sigma(self, r):
        return 0.5 * self._db(r) * torch.exp(-self._b(r)) / self.sigma(r)

    def from_flow_sigma(self, t):
        t = _f64(t)
        # SNR rho = (1 - t) / t = alpha / sigma  <=>  exp(-B) = rho^2 / (1 + rho^2)  <=>  B = log1p(1 / rho^2).
        rho2 = ((1 - t) / t) ** 2
        b = torch.log1p(1 / rho2)
        d = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b)) / d


def _f64(r) -> torch.Tensor:
    return torch.as_tensor(r, dtype=torch.float64)


def make_interpolant(name: str) -> Interpolant:
    check_choice("interpolant", name, INTERPOLANTS)
    return LinearInterpolant() if name == "linear" else VPInterpolant()


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SDEConfig:
    """A flow sampler: interpolant, diffusion coefficient g(r) and time grid.

    interpolant: "vp" (default, RBF's recommendation: the SDE conversion helps particle methods most with VP) or
        "linear" (no conversion).
    diffusion: g(r) = norm * r^2 ("square", RBF's code default with norm 3: strong noise early, almost none late),
        norm * r ("linear"), norm ("constant"), norm * sigma_r ("sigma"), or 0 ("zero": the probability-flow ODE).
        "renoise" is no SDE but the few-step students' rule: x_next = alpha(r_next) x0_hat + sigma(r_next) z with
        fresh noise z (accel.schedulers.fewstep), the way a distilled student was trained to be sampled.
    diffusion_norm: the norm above (>= 0).
    grid: "pipeline" (the pipeline's own sigma schedule, SNR-matched into r: the sample is fully integrated) or
        "rbf" (RBF's warped grid r_k = sqrt(1 - (k / num_steps)^2) for k < num_steps, then 0: the last step is a
        one-step x0 estimate from r = 0.436, right only for few-step distilled models such as FLUX.1-schnell).
    rbf_steps: grid points of the "rbf" grid before the jump to 0 (the paper: 10).
    """

    interpolant: str = "vp"
    diffusion: str = "square"
    diffusion_norm: float = 3.0
    grid: str = "pipeline"
    rbf_steps: int = 10

    def __post_init__(self):
        check_choice("interpolant", self.interpolant, INTERPOLANTS)
        check_choice("diffusion", self.diffusion, DIFFUSIONS)
        check_choice("grid", self.grid, GRIDS)
        if not (self.diffusion_norm >= 0 and math.isfinite(self.diffusion_norm)):
            raise ValueError(f"diffusion_norm must be a finite number >= 0, got {self.diffusion_norm}")
        if self.rbf_steps < 1:
            raise ValueError(f"rbf_steps must be >= 1, got {self.rbf_steps}")

    @classmethod
    def ode(cls) -> SDEConfig:
        """The deterministic flow ODE (Euler on the pipeline's grid): what plain sampling does."""
        return cls(interpolant="linear", diffusion="zero", diffusion_norm=0.0)

    @classmethod
    def renoise(cls) -> SDEConfig:
        """The few-step students' rule on the linear interpolant: each step re-noises the x0 prediction to the next
        grid point with fresh noise (accel.schedulers.fewstep.fewstep_update with rule "renoise", to float rounding)."""
        return cls(interpolant="linear", diffusion="renoise")

    @property
    def deterministic(self) -> bool:
        return self.diffusion == "zero" or (self.diffusion != "renoise" and self.diffusion_norm == 0)


def diffusion_coefficient(config: SDEConfig, interpolant: Interpolant, r: torch.Tensor) -> torch.Tensor:
    """g(r) as a float64 tensor (see SDEConfig.diffusion)."""
    r = _f64(r)
    c = config.diffusion_norm
    if config.diffusion == "square":
        return c * r**2
    if config.diffusion == "linear":
        return c * r
    if config.diffusion == "constant":
        return torch.full_like(r, c)
    if config.diffusion == "sigma":
        return c * interpolant.sigma(r)
    return torch.zeros_like(r)


def rbf_time_grid(num_steps: int = 10) -> TimeGrid:
    """RBF's "exp" schedule: tau_k = 1 - k / n warped to r = sqrt(1 - (1 - tau)^2), k < n, then 0.

    n = 10 gives r = 1, .995, .980, .954, .917, .866, .800, .714, .600, .436, 0.
    """
    k = torch.arange(num_steps, dtype=torch.float64)
    r = torch.sqrt(1 - (k / num_steps) ** 2)
    return TimeGrid(torch.cat([r, torch.zeros(1, dtype=torch.float64)]).float())


def sde_time_grid(flow_grid: TimeGrid, config: SDEConfig) -> TimeGrid:
    """The grid in interpolant time r: RBF's, or the pipeline's flow sigmas mapped to the SNR-matched r.

    VP cannot reach flow sigmas above t(r=1) = 0.9935 (alpha(1) > 0): the grid starts at r = 1 and the flow points
    beyond VP's reach merge into that first point (a dense grid then has fewer steps under VP; the NFE of one
    sample is always the returned grid's num_steps).
    """
    if config.grid == "rbf":
        return rbf_time_grid(config.rbf_steps)
    interp = make_interpolant(config.interpolant)
    s = flow_grid.sigmas.double()
    r = interp.from_flow_sigma(s[s > 0]).clamp(max=1.0)
    r = torch.cat([r[:1], r[1:][r[1:] < 1.0], s[s <= 0]])
    return TimeGrid(r.float() if flow_grid.sigmas.dtype != torch.float64 else r)


# ---------------------------------------------------------------------------------------------------------------
# Prediction and step
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FlowPrediction:
    """What one denoiser call at (x, r) gives, all shaped like x: the posterior means x0 and eps, and the velocity
    v = dx/dr of the sampler's interpolant (for the linear one: the model's own velocity, bit for bit)."""

    x0: torch.Tensor
    eps: torch.Tensor
    v: torch.Tensor

    def select(self, index: torch.Tensor) -> FlowPrediction:
        """The predictions of the samples `index` (a (K,) long tensor), e.g. after resampling."""
        return FlowPrediction(self.x0[index], self.eps[index], self.v[index])

    @staticmethod
    def cat(preds: list[FlowPrediction]) -> FlowPrediction:
        return FlowPrediction(*(torch.cat([getattr(p, k) for p in preds]) for k in ("x0", "eps", "v")))


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d or (B,) coefficient as x's dtype, broadcasting against x."""
    c = torch.as_tensor(c).to(device=x.device, dtype=x.dtype)
    return c.view(-1, *([1] * (x.ndim - 1))) if c.ndim == 1 else c


def predict(denoiser: Denoiser, x: torch.Tensor, r: torch.Tensor, cond: Cond,
            interpolant: Interpolant) -> FlowPrediction:
    """One denoiser call (counted in NFE by the denoiser) at interpolant time r: (B,) or 0-d.

    The model sees flow sigma t_r on x / s_r (SNR matching); x0 and eps are invariant to that rescaling.
    """
    r = torch.as_tensor(r)
    if isinstance(interpolant, LinearInterpolant):
        u = denoiser.velocity(x, r, cond)
        return FlowPrediction(velocity_to_x0(x, u, r), velocity_to_eps(x, u, r), u)
    t, s = interpolant.flow_time(r)
    x_flow = x / _bcast(s, x)
    t_model = t.to(r.dtype if r.is_floating_point() else torch.float32)
    u = denoiser.velocity(x_flow, t_model, cond)
    x0, eps = velocity_to_x0(x_flow, u, t_model), velocity_to_eps(x_flow, u, t_model)
    v = _bcast(interpolant.d_alpha(r), x) * x0 + _bcast(interpolant.d_sigma(r), x) * eps
    return FlowPrediction(x0, eps, v)


def sde_step(x: torch.Tensor, pred: FlowPrediction, r: torch.Tensor, r_next: torch.Tensor, config: SDEConfig,
             interpolant: Interpolant, noise: torch.Tensor | None) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from r to r_next < r, from a cached prediction (0 NFE).

    Args:
        x: (B, ...) latents at r; pred: the prediction at (x, r); noise: (B, ...) standard normal, or None when
            the step is deterministic (g = 0 or r_next = 0).
    Returns:
        (B, ...) latents at r_next. Into r_next = 0: pred.x0 (see the module docstring).
    """
    if float(r_next) == 0.0:
        return pred.x0
    if config.diffusion == "renoise":
        if noise is None:
            raise ValueError("a re-noising step needs noise")
        a, s = interpolant.alpha(_f64(r_next)), interpolant.sigma(_f64(r_next))
        xf = pred.x0.float() if pred.x0.dtype != torch.float64 else pred.x0
        return (_bcast(a, xf) * xf + _bcast(s, xf) * noise.to(xf.dtype)).to(pred.v.dtype)
    g = diffusion_coefficient(config, interpolant, r)
    if float(g.abs().max()) == 0.0:
        # g = 0: exactly the flow Euler step (same float32 arithmetic as accel.schedulers.flow).
        return euler_update(x, pred.v, r, r_next)
    if noise is None:
        raise ValueError("a stochastic step (g > 0) needs noise")
    dt = _f64(r) - _f64(r_next)
    xf = x.float() if x.dtype != torch.float64 else x
    # score = -eps / sigma_r, finite because sigma_r > 0 for r > 0 on both interpolants.
    score = -pred.eps.to(xf.dtype) / _bcast(interpolant.sigma(r), xf)
    drift = pred.v.to(xf.dtype) - _bcast(0.5 * g**2, xf) * score
    x_next = xf - _bcast(dt, xf) * drift + _bcast(g * torch.sqrt(dt), xf) * noise.to(xf.dtype)
    return x_next.to(pred.v.dtype)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved: reproducible anywhere."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def sample_sde(denoiser: Denoiser, x: torch.Tensor, grid: TimeGrid, cond: Cond, config: SDEConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Integrate the reverse SDE over a grid in interpolant time r (see sde_time_grid) from x at grid[0].

    Costs grid.num_steps denoiser calls per sample. With config.deterministic and the linear interpolant this is
    accel.schedulers.flow.sample with euler_step, bit for bit.
    """
    interp = make_interpolant(config.interpolant)
    rs = grid.sigmas.to(x.device)
    for i in range(grid.num_steps):
        pred = predict(denoiser, x, rs[i], cond, interp)
        stochastic = not config.deterministic and float(rs[i + 1]) > 0
        noise = draw_noise(tuple(x.shape), generator, x) if stochastic else None
        x = sde_step(x, pred, rs[i], rs[i + 1], config, interp, noise)
    return x
