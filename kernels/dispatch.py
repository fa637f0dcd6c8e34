"""The dispatch rule (DESIGN.md section 6): Triton on CUDA tensors, the pure-torch reference otherwise.

The reference runs when any tensor is off CUDA, when triton is not installed, or when ACCEL_DISABLE_KERNELS=1
(read on every call, so it can be flipped inside one process). TRITON_INTERPRET=1 never routes the public functions
to the interpreter: tests call the launchers (`*_fwd`) on CPU tensors explicitly.
"""

from __future__ import annotations

import os

import torch

from accel.kernels._triton import HAS_TRITON

DISABLE_ENV = "ACCEL_DISABLE_KERNELS"


def kernels_disabled() -> bool:
    """True when ACCEL_DISABLE_KERNELS=1 forces the pure-torch references."""
    return os.environ.get(DISABLE_ENV, "0") == "1"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether a public function should launch its Triton kernel for these tensors (None entries are ignored)."""
    # Tensors first: on CPU this returns at the first one, before the environment lookup (hot path of every
    # hooked block on CPU).
    return all(t.is_cuda for t in tensors if t is not None) and HAS_TRITON and not kernels_disabled()
