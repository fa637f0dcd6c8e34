"""Kernel tests: every Triton kernel against its pure-torch reference.

Where: on a CUDA GPU the kernels run compiled on CUDA tensors; elsewhere they run in Triton's CPU interpreter
(TRITON_INTERPRET=1) on CPU tensors. Tests take the `device` fixture and never hard-code one.

The interpreter flag, and why it is set in two places. Triton reads TRITON_INTERPRET when a function is decorated:
accel.kernels decorates its kernels at first launch (so their import order does not matter), but Triton decorates
its own library (tl.sum, tl.max, tl.randn4x, ...) when triton is first imported, and torch._dynamo imports triton
as soon as diffusers is imported, i.e. while an earlier test folder is collected. So:
- tests/conftest.py imports triton once with TRITON_INTERPRET=1 on machines without CUDA (and restores the
  variable at once); running this folder alone, the line below does the same, before any test module imports;
- this conftest sets the variable only while this folder's test modules run (module fixture) and restores it
  after collection, so other folders never see it.
If triton was nevertheless imported in compiled mode first, the interpreter cannot run the kernels: the tests of
this folder are then skipped with that reason, not failed.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before this folder's modules import triton or accel.kernels


def _restore_interpret() -> None:
    if _PREVIOUS_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET


def _interpreter_problem() -> str | None:
    """Why the Triton interpreter cannot run kernels in this process, or None when it can."""
    try:
        import triton.language.standard as standard
    except ImportError:
        return None  # no triton: the launch tests fail loudly with "triton is not installed"
    if type(standard.sum).__name__ != "InterpretedFunction":
        return ("triton was imported before TRITON_INTERPRET=1 was set, so its library runs compiled and the CPU "
                "interpreter cannot run the kernels; import triton under TRITON_INTERPRET=1 in tests/conftest.py "
                "(see tests/kernels/conftest.py) or run `pytest tests/kernels` on its own")
    return None


INTERPRETER_PROBLEM = None if CUDA else _interpreter_problem()


def pytest_collection_finish(session):
    _restore_interpret()


# Module scope: "package" scope falls back to the whole session for a folder without __init__.py.
@pytest.fixture(scope="module", autouse=True)
def triton_mode():
    """TRITON_INTERPRET=1 while each test module of this folder runs without CUDA; restored afterwards."""
    if INTERPRETER_PROBLEM:
        pytest.skip(INTERPRETER_PROBLEM)
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    _restore_interpret()


@pytest.fixture
def device():
    return torch.device("cuda" if CUDA else "cpu")


DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Kernel vs the float32 reference rounded to the dtype (torch.testing's defaults per dtype). Provenance: the
# kernels compute in float32 and round once, so they differ from the rounded float32 reference by at most one
# ulp of the output dtype (2^-8 relative for bfloat16, 2^-11 for float16) plus float32 reordering (~1e-6).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1.3e-6),
    torch.bfloat16: dict(atol=1e-5, rtol=1.6e-2),
    torch.float16: dict(atol=1e-5, rtol=1e-3),
}

# Kernel vs the reference evaluated in the dtype itself (what the unfused models compute): that reference rounds
# after each of its ops (up to four for the modulated norm), so allow a few ulp of the largest intermediate.
NATIVE_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=6e-2, rtol=3e-2),
    torch.float16: dict(atol=8e-3, rtol=4e-3),
}


def _assert_matches(actual: torch.Tensor, expected_fp32: torch.Tensor, dtype: torch.dtype) -> None:
    """Assert a kernel output equals the float32 reference rounded to dtype, within TOL[dtype]."""
    assert actual.dtype == dtype, (actual.dtype, dtype)
    torch.testing.assert_close(actual, expected_fp32.to(dtype), **TOL[dtype])


def _assert_native(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Assert a kernel output equals the reference run in its own dtype, within NATIVE_TOL."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, **NATIVE_TOL[expected.dtype])


# Test modules get the helpers as fixtures: tests/ has no __init__.py (a package named `kernels` would shadow
# Hugging Face's), so they cannot import this conftest.
@pytest.fixture
def assert_matches():
    return _assert_matches


@pytest.fixture
def assert_native():
    return _assert_native


@pytest.fixture
def rng():
    """A CPU generator: tensors are drawn on the CPU and moved, so both devices see the same values."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def force_triton(monkeypatch):
    """Route the public kernel functions to the Triton launchers for every tensor (CPU: the interpreter)."""
    from accel.kernels import dispatch

    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param
