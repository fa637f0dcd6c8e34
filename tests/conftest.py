import os
import sys
from pathlib import Path

# `python -m pytest` puts the working directory on sys.path, and the repository root holds folders named kernels/
# and evals/ (installed as accel.kernels, accel.evals): there they would pass for top-level packages that other
# libraries probe for (transformers looks for Hugging Face's `kernels`). accel is installed, so the root goes.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

# Offline, deterministic, and polite to a 2-core machine: spinning OpenMP threads fighting another process are
# many times slower than one thread (shared/notes/environment-cpu.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("ACCEL_TEST_THREADS", "1")))

# Triton builds its language library when first imported, in the interpreter mode of that moment, and diffusers
# imports it early (through torch._dynamo). Without CUDA, tests/kernels runs the kernels in the CPU interpreter:
# import triton once under TRITON_INTERPRET=1, then restore the variable (tests/kernels/conftest.py sets it only
# while its own tests run).
if not torch.cuda.is_available():
    _interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    finally:
        if _interpret is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _interpret


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_shapes_folder(tmp_path_factory) -> str:
    """A tiny built-in-style image pipeline saved as a diffusers folder (for the CLI tests): random weights, the
    zero-initialised output layers nudged so that samples differ."""
    from accel.pipelines.shapes import build_shapes_pipeline

    path = tmp_path_factory.mktemp("tiny-shapes")
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in p.transformer.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    p.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_text_folder(tmp_path_factory):
    """make(vocab, dim=32, max_len=128) -> the path of a tiny seeded masked-diffusion LM folder (random weights,
    one layer) with that vocabulary, for the dLLM CLI tests."""
    from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM, MDLMConfig

    def make(vocab, dim: int = 32, max_len: int = 128) -> str:
        folder = tmp_path_factory.mktemp("tiny-mdlm")
        tok = CharTokenizer(list(vocab))
        torch.manual_seed(0)
        MaskedDiffusionLM(MDLMConfig(vocab_size=len(tok), mask_id=tok.mask_id, dim=dim, layers=1, heads=2,
                                     max_len=max_len)).save_pretrained(folder)
        tok.save(folder)
        return str(folder)

    return make
