"""Every kernel compiles for a real GPU (sm_90: PTX and cubin) on this GPU-less machine.

The interpreter runs kernels as Python, so it misses what only the compiler checks (loop-carried types, constexpr
branches, pointer arithmetic types). triton.compile with an explicit GPUTarget needs no driver; ptxas ships with
the triton wheel. It runs in a subprocess: Triton decorates its own library functions (tl.max, tl.randn4x, ...)
when triton is imported, in the interpreter mode of that moment, and this folder imports triton under
TRITON_INTERPRET=1. Launch semantics still need a GPU (benchmarks/kernels/README.md).
"""

import inspect
import os
import subprocess
import sys

import pytest

# Pointer element types that are not the activations' bfloat16, and scalar types that are not int32.
POINTERS = {"sigma_ptr": "*fp32", "sigma_next_ptr": "*fp32", "dt_ptr": "*fp32", "g_ptr": "*fp32",
            "ancestor_ptr": "*i64", "conf_ptr": "*fp32", "index_ptr": "*i64", "scale_ptr": "*fp32",
            "shift_ptr": "*fp32", "gate_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32"}
SCALARS = {"eps": "fp32", "inv_temperature": "fp32", "seed": "i64"}

# (module, kernel, constexprs as the launchers pick them at Flux / Wan sizes)
CASES = [
    ("modulated_norm", "_modulated_layer_norm_kernel", dict(BLOCK_M=1, BLOCK_D=4096)),
    ("gated_residual", "_gated_residual_kernel", dict(BLOCK_M=4, BLOCK_D=1024)),
    ("qk_norm_rope", "_rms_norm_rope_kernel", dict(HAS_WEIGHT=True, HAS_ROPE=True, BLOCK_M=32, BLOCK_P=64)),
    ("qk_norm_rope", "_rms_norm_rope_kernel", dict(HAS_WEIGHT=False, HAS_ROPE=False, BLOCK_M=1, BLOCK_P=4096)),
    ("euler", "_euler_update_kernel", dict(SCALAR_SIGMA=True, BLOCK=4096)),
    ("euler", "_euler_update_kernel", dict(SCALAR_SIGMA=False, BLOCK=4096)),
    ("sde", "_sde_update_kernel", dict(BLOCK=4096)),
    ("resample", "_resample_euler_kernel", dict(SCALAR_SIGMA=False, BLOCK=4096)),
    ("confidence", "_confidence_argmax_kernel", dict(BLOCK_R=1, BLOCK_V=4096)),
]


def _signature(fn, constexprs):
    sig = {}
    for name in inspect.signature(fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = POINTERS.get(name, "*bf16")
        else:
            sig[name] = SCALARS.get(name, "i32")
    return sig


def compile_all() -> None:
    """Compile every case for sm_90; print one line per kernel (run as a script, without TRITON_INTERPRET)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    for module, name, constexprs in CASES:
        lazy = getattr(importlib.import_module(f"accel.kernels.{module}"), name)
        src = triton.compiler.ASTSource(fn=triton.jit(lazy.fn), signature=_signature(lazy.fn, constexprs),
                                        constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert len(compiled.asm["cubin"]) > 0, name
        print(f"compiled {name} {constexprs}")


def test_every_kernel_compiles_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, set to silence its deprecation warning
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("compiled ") == len(CASES)


if __name__ == "__main__":
    compile_all()
