"""Fused Triton kernels for the DiT and sampler hot paths, each with a pure-torch reference twin.

Dispatch rule (DESIGN.md section 6, accel.kernels.dispatch): the public functions below launch Triton when their
tensors are on CUDA, triton imports, and ACCEL_DISABLE_KERNELS is not 1; otherwise they run the reference.
Every op is forward only (no training path needs a backward yet; distillation will).

Ops, one module each (kernel -> launcher `*_fwd` -> public function, plus `*_reference`):
- modulated_norm: `LN(x) * (1 + scale) + shift`
- gated_residual: `x + gate * y`
- qk_norm_rope: RMSNorm of q and k fused with rotary embedding (Flux / built-in DiT per head, Wan across heads)
- euler: flow Euler update with per-sample or per-token sigma
- sde: Euler-Maruyama update with in-kernel Philox noise
- resample: particle gather by ancestor fused with the next Euler step
- confidence: max softmax probability and argmax over a vocabulary (online softmax)

`apply_fused_kernels(model)` (accel.kernels.fused) routes supported transformers through them with reversible
per-instance hooks.
"""

from __future__ import annotations

if __name__ != "accel.kernels":  # a bare `import kernels` from the repository root: accel/_rootpath.py
    from accel._rootpath import load_installed

    load_installed(__name__)
else:
    from accel.kernels._triton import HAS_TRITON
    from accel.kernels.confidence import confidence_argmax
    from accel.kernels.dispatch import kernels_disabled
    from accel.kernels.euler import euler_update
    from accel.kernels.fused import (
        FusedKernelsConfig, FusedKernelsHandle, apply_fused_kernels, supports_fused_kernels,
    )
    from accel.kernels.gated_residual import gated_residual
    from accel.kernels.modulated_norm import modulated_layer_norm
    from accel.kernels.qk_norm_rope import qk_norm_across_heads_rope, qk_norm_rope
    from accel.kernels.resample import resample_euler_update
    from accel.kernels.sde import sde_update

IMPLEMENTED: tuple[str, ...] = (
    "modulated_layer_norm",
    "gated_residual",
    "qk_norm_rope",
    "qk_norm_across_heads_rope",
    "euler_update",
    "sde_update",
    "resample_euler_update",
    "confidence_argmax",
)

__all__ = [
    "IMPLEMENTED", "FusedKernelsConfig", "FusedKernelsHandle", "apply_fused_kernels", "confidence_argmax",
    "euler_update", "gated_residual", "modulated_layer_norm", "qk_norm_across_heads_rope", "qk_norm_rope",
    "resample_euler_update", "sde_update", "status", "supports_fused_kernels",
]


def status() -> dict:
    """What the dispatcher picks on this machine for CUDA tensors, and why (shown by `accel info`).

    Returns:
        dict with active (bool: Triton kernels run on this machine's CUDA tensors), reason (str), path
        ("triton" or "reference"), triton_installed, cuda, disabled_by_env (bools) and kernels (list of names).
    """
    import torch

    triton = HAS_TRITON
    disabled = kernels_disabled()
    cuda = torch.cuda.is_available()
    active = triton and cuda and not disabled
    if disabled:
        reason = "ACCEL_DISABLE_KERNELS=1: pure-torch references everywhere"
    elif not triton:
        reason = "triton is not installed (or fails to import): pure-torch references everywhere"
    elif not cuda:
        reason = "no CUDA device: the pure-torch references run"
    else:
        reason = f"Triton kernels on CUDA tensors ({len(IMPLEMENTED)} ops)"
    return {"active": active, "reason": reason, "path": "triton" if active else "reference",
            "triton_installed": triton, "cuda": cuda, "disabled_by_env": disabled, "kernels": list(IMPLEMENTED)}
