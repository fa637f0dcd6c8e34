"""The dispatch rule, `status()` for `accel info`, lazy kernel decoration, and importing without triton."""

import os
import subprocess
import sys
import types

import pytest
import torch

import accel.kernels as K
from accel.kernels import dispatch
from accel.kernels._triton import LazyKernel, interpreting
from accel.kernels.euler import euler_update_fwd


def test_cpu_tensors_take_the_reference():
    assert not dispatch.use_triton(torch.zeros(2), None)


def test_cuda_tensors_take_triton_unless_disabled(monkeypatch):
    fake_cuda = types.SimpleNamespace(is_cuda=True)  # this machine has no GPU; the rule only reads is_cuda
    assert dispatch.use_triton(fake_cuda, None)
    assert not dispatch.use_triton(fake_cuda, torch.zeros(1))  # one CPU tensor: reference
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    assert not dispatch.use_triton(fake_cuda)


def test_status_reports_the_active_path(monkeypatch):
    monkeypatch.delenv("ACCEL_DISABLE_KERNELS", raising=False)
    st = K.status()
    assert st["kernels"] == list(K.IMPLEMENTED) and len(st["kernels"]) == 8
    assert st["active"] == (st["cuda"] and st["triton_installed"])
    if not st["cuda"]:
        assert st["path"] == "reference" and "no CUDA device" in st["reason"]
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    st = K.status()
    assert not st["active"] and st["disabled_by_env"] and "ACCEL_DISABLE_KERNELS=1" in st["reason"]


def test_public_functions_are_exported():
    for name in K.IMPLEMENTED:
        assert callable(getattr(K, name)), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter mode: machines without CUDA")
def test_kernels_decorate_lazily_per_interpreter_mode(monkeypatch):
    # Launching under TRITON_INTERPRET=1 decorates with the interpreter, whatever was set at import time.
    x = torch.zeros(4)
    euler_update_fwd(x, x, 0.5, 0.4)
    from accel.kernels.euler import _euler_update_kernel

    assert isinstance(_euler_update_kernel, LazyKernel) and interpreting()
    assert type(_euler_update_kernel._jitted[True]).__name__ == "InterpretedFunction"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1"):
        euler_update_fwd(x, x, 0.5, 0.4)


def test_everything_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import accel.kernels as K\n"
        "from accel.kernels._triton import HAS_TRITON\n"
        "from accel.kernels.euler import euler_update_fwd\n"
        "x = torch.ones(2, 3)\n"
        "assert not HAS_TRITON and not K.status()['triton_installed']\n"
        "assert torch.equal(K.euler_update(x, x, 1.0, 0.5), x * 0.5)\n"
        "try:\n"
        "    euler_update_fwd(x, x, 1.0, 0.5)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e)\n"
        "else:\n"
        "    raise AssertionError('the launcher ran without triton')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
