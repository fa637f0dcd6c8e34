"""The losses of few-step distillation: DMD's generator surrogate, the fake-score (critic) flow-matching loss,
Salt's self-consistency term and Self Forcing's ODE-pair regression.

Shapes: x, x0, eps, v are (B, ...) in any layout an adapter uses; sigma is a 0-d tensor or (B,).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from accel.core.flow import _b


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,)."""
    return x.flatten(1).mean(1)


def dmd_direction(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """DMD's gradient direction Delta = (x0_fake - x0_real) / mean|x - x0_real| (per-sample mean over every
    element: DMD's normaliser), float64, NaNs (from a zero normaliser) set to 0."""
    x, real, fake = x.double(), x0_real.double(), x0_fake.double()
    norm = (x - real).abs().flatten(1).mean(1).view(-1, *([1] * (x.ndim - 1)))
    return torch.nan_to_num(torch.where(norm > 0, (fake - real) / norm, torch.full_like(x, float("nan"))), nan=0.0)


def dmd_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * MSE(x, sg(x - Delta)) in float64: its gradient w.r.t. x is Delta / x.numel(), so the generator moves
    its sample x along -Delta (towards the teacher's x0 and away from the fake score's)."""
    delta = dmd_direction(x.detach(), x0_real, x0_fake)
    x64 = x.double()
    return 0.5 * F.mse_loss(x64, (x64 - delta).detach())


def critic_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Flow matching on generator samples: MSE(v_pred, eps - x0), in float32."""
    return F.mse_loss(v_pred.float(), (eps - x0).float())


def sc_endpoints(x_s: torch.Tensor, v1: torch.Tensor, sigma_s: float, sigma_m: float, sigma_e: float,
                 velocity: Callable[[torch.Tensor, float], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Salt's direct and composed endpoints from x_s at sigma_s to sigma_e.

    direct (keeps v1's gradient): x_e1 = x_s - (sigma_s - sigma_e) v1;
    composed (the target, no gradient): x_m = x_s - (sigma_s - sigma_m) sg(v1), v2 = velocity(x_m, sigma_m),
    x_e2 = x_m - (sigma_m - sigma_e) v2 (x_e2 = x_m when sigma_m == sigma_e: no second call).
    """
    x_e1 = x_s - (sigma_s - sigma_e) * v1
    with torch.no_grad():
        x_m = x_s - (sigma_s - sigma_m) * v1.detach()
        x_e2 = x_m if sigma_m == sigma_e else x_m - (sigma_m - sigma_e) * velocity(x_m, sigma_m)
    return x_e1, x_e2


def sc_loss(x_e1: torch.Tensor, x_e2: torch.Tensor, sigma_s: float) -> torch.Tensor:
    """L_SC = mean_b[(1 - sigma_s) * mean((x_e1 - x_e2)^2)]: the semigroup defect, down-weighted at high noise.

    Salt writes the weight as 1 - t_s / 1000 with t_s its warped timestep, i.e. 1 - sigma_s here."""
    return ((1.0 - sigma_s) * _per_sample_mean((x_e1.float() - x_e2.float()) ** 2)).mean()


def ode_loss(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, x0_teacher: torch.Tensor) -> torch.Tensor:
    """Self Forcing's ODE-pair regression: the student's x0 = x - sigma v at a point of the teacher's ODE
    trajectory against the trajectory's end (MSE, float32)."""
    return F.mse_loss((x - _b(sigma, x) * v).float(), x0_teacher.float())
