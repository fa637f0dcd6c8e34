"""Fused Triton kernels (planned: see the kernels issue) and their dispatch rule.

Dispatch rule (DESIGN.md section 6): Triton on CUDA tensors, the pure-torch reference elsewhere or when
ACCEL_DISABLE_KERNELS=1. No fused kernel is implemented yet, so every path is the reference today.
"""

from __future__ import annotations

import importlib.util
import os

IMPLEMENTED: tuple[str, ...] = ()


def status() -> dict:
    """What the dispatcher would pick on this machine, and why."""
    import torch

    triton = importlib.util.find_spec("triton") is not None
    disabled = os.environ.get("ACCEL_DISABLE_KERNELS", "0") == "1"
    cuda = torch.cuda.is_available()
    active = bool(IMPLEMENTED) and triton and cuda and not disabled
    if not IMPLEMENTED:
        reason = "no fused kernels implemented yet (pure-torch paths everywhere)"
    elif disabled:
        reason = "ACCEL_DISABLE_KERNELS=1"
    elif not triton:
        reason = "triton is not installed"
    elif not cuda:
        reason = "no CUDA device: the pure-torch reference runs"
    else:
        reason = "Triton kernels on CUDA"
    return {"active": active, "reason": reason, "triton_installed": triton, "cuda": cuda,
            "disabled_by_env": disabled, "kernels": list(IMPLEMENTED)}
