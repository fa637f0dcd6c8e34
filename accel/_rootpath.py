"""Keep the repository root from shadowing installed packages of the same name.

accel's subpackages live in root folders (kernels/, pipelines/, schedulers/, evals/) that pyproject maps to
accel.kernels and friends. Python started in the repository root has the root on sys.path, where those folders would
hide installed packages of the same name: transformers imports Hugging Face's `kernels`. Each folder's __init__ calls
`load_installed` when it is imported under its bare name, so that `import kernels` from the root gives what is
installed elsewhere on sys.path, or fails as it would outside the checkout.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _outside_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() != ROOT
    except OSError:
        return True


def load_installed(name: str) -> None:
    """Make sys.modules[name] the module `import name` finds without the repository root on sys.path.

    Called from the root folder's own __init__ while it executes as `name`; the import machinery then returns
    the installed module. Raises ModuleNotFoundError when nothing else of that name is installed.
    """
    path = [entry for entry in sys.path if _outside_root(entry)]
    spec = None
    for finder in sys.meta_path:  # the path finder without the root; other finders (editable installs) as they are
        if finder is importlib.machinery.PathFinder:
            spec = finder.find_spec(name, path)
        elif hasattr(finder, "find_spec"):
            spec = finder.find_spec(name, None)
        if spec is not None:
            break
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
