"""accel: faster and better diffusion / flow-matching generation at a fixed compute budget.

    from accel import accelerate_pipeline
    pipe = accelerate_pipeline(pipe)   # same outputs for the same seed; out.stats has NFE and seconds

The public names load on first use (PEP 562), so `import accel` and the CLI's help do not import torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AccelConfig": "accel.config",
    "AcceleratedPipeline": "accel.api",
    "Stats": "accel.api",
    "accelerate_pipeline": "accel.api",
    "builtin_model_path": "accel.models",
    "load_pipeline": "accel.models",
}
__all__ = ["AccelConfig", "AcceleratedPipeline", "Stats", "accelerate_pipeline", "builtin_model_path",
           "load_pipeline", "__version__"]

# A checkout used without an editable install (Python started in the repository root, accel installed regularly or
# not at all): accel.kernels and friends are the root's folders (pyproject's package-dir), so look for them there.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "kernels" / "dispatch.py").is_file():
    __path__.append(str(_ROOT))

if TYPE_CHECKING:
    from accel.api import AcceleratedPipeline, Stats, accelerate_pipeline
    from accel.config import AccelConfig
    from accel.models import builtin_model_path, load_pipeline


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'accel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
