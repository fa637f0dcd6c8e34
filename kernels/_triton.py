"""Guarded Triton import and a lazily compiled kernel decorator, shared by every kernel module.

Two facts shape this file (shared/notes/environment-cpu.md, section 2):
- `triton` may be missing (macOS, Windows, minimal installs); every kernel module must still import, and the
  public functions then run their pure-torch references.
- Triton reads TRITON_INTERPRET when `@triton.jit` runs, not at launch: a kernel decorated before the variable was
  set stays a compiled `JITFunction` and fails on CPU tensors. `kernel` therefore decorates on the first launch,
  once per interpreter setting, so importing accel.kernels early (the CLI, accelerate_pipeline) never fixes the
  mode of a later test run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import collections
import contextlib
import types
from typing import Callable

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in a subprocess test with triton hidden
    triton = None
    # Kernel signatures annotate meta-parameters with `tl.constexpr`, evaluated when the module is imported.
    tl = types.SimpleNamespace(constexpr=object)
    HAS_TRITON = False

# Launches per kernel in this process, keyed by kernel name without "_" and "_kernel" ("modulated_layer_norm",
# "rms_norm_rope", ...): one dict increment per launch, so tests can tell a kernel ran from a silent fallback.
LAUNCHES: collections.Counter[str] = collections.Counter()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return HAS_TRITON and bool(triton.knobs.runtime.interpret)


class LazyKernel:
    """A `@triton.jit` kernel compiled on first launch: `LazyKernel(fn)[grid](*args, **meta)`.

    Keeps one decorated function per interpreter setting, read at launch time. Launches run on the device of the
    first tensor argument: Triton launches on the *current* CUDA device, which for a tensor on another GPU reads
    the wrong memory ("an illegal memory access was encountered").
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__.strip("_").removesuffix("_kernel")  # the key in LAUNCHES
        self._jitted: dict[bool, object] = {}

    def __getitem__(self, grid) -> Callable:
        if not HAS_TRITON:
            raise RuntimeError(f"{self.fn.__name__}: triton is not installed; call the reference instead")
        mode = interpreting()
        if mode not in self._jitted:
            self._jitted[mode] = triton.jit(self.fn)
        jitted = self._jitted[mode]

        def launch(*args, **meta):
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            # FMA contraction, Triton's default so far, stated so that Triton 3.9 does not warn on every compile.
            meta.setdefault("enable_fp_fusion", True)
            guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            LAUNCHES[self.name] += 1
            with guard:
                return jitted[grid](*args, **meta)

        return launch

    def __repr__(self) -> str:
        return f"LazyKernel({self.fn.__name__})"


@contextlib.contextmanager
def count_launches():
    """Kernel launches inside the block, per kernel name: `with count_launches() as n: ...`, then n["euler_update"].

    The Counter is filled when the block exits (0 for kernels that did not run).
    """
    before = LAUNCHES.copy()
    counts: collections.Counter[str] = collections.Counter()
    try:
        yield counts
    finally:
        counts.update(LAUNCHES - before)


def kernel(fn: Callable) -> LazyKernel:
    """Decorator for Triton kernels: `@kernel` instead of `@triton.jit` (see the module docstring)."""
    return LazyKernel(fn)


def cdiv(a: int, b: int) -> int:
    """Ceiling division for grid sizes."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (Triton block sizes must be powers of two)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def check_launchable(*tensors) -> None:
    """Raise ValueError unless the Triton path can run on these tensors: CUDA, or CPU under the interpreter."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the reference function")
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu" and not interpreting():
        raise ValueError("the Triton path needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"the Triton path supports cuda (and cpu under TRITON_INTERPRET=1), got {device.type}")
