"""The repository root is a place users stand in: Python started there must import what is installed, and accel."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOT_FOLDERS = ("kernels", "pipelines", "evals", "schedulers")

# Prints, for each root folder's name, where `import <name>` leads (or that nothing of that name is installed).
BARE_IMPORTS = f"""
import importlib
for name in {ROOT_FOLDERS!r}:
    try:
        print(name, importlib.import_module(name).__file__)
    except ModuleNotFoundError as e:
        print(name, "not installed:", e.name)
"""


def python(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_root_folders_do_not_shadow_installed_packages(tmp_path):
    from_root, elsewhere = python(BARE_IMPORTS, ROOT), python(BARE_IMPORTS, tmp_path)
    assert from_root == elsewhere
    for line, name in zip(from_root.splitlines(), ROOT_FOLDERS):
        assert not Path(line.split()[-1]).is_relative_to(ROOT / name), line
    # Hugging Face's `kernels` is a transformers dependency: the name must reach it, not accel's folder.
    assert "site-packages" in from_root.splitlines()[0]


def test_transformers_diffusers_and_accel_import_from_the_root():
    code = ("from transformers import CLIPModel\n"
            "from diffusers.loaders import peft\n"
            "import kernels, accel.kernels, accel.pipelines, accel.schedulers, accel.evals\n"
            "from accel import accelerate_pipeline\n"
            "print(kernels.__file__, accel.kernels.__file__, accel.kernels.status()['path'])\n")
    installed, ours, _ = python(code, ROOT).split()
    assert Path(ours) == ROOT / "kernels" / "__init__.py"
    assert not Path(installed).is_relative_to(ROOT / "kernels")


def test_subpackages_resolve_from_the_root_without_an_editable_install():
    # A regular install (or none) with Python started in the root imports the checkout's accel/, which must still
    # find accel.kernels and friends in the root folders.
    code = ("import sys, importlib.util\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "import accel.evals.io\n"
            f"specs = [importlib.util.find_spec('accel.' + n) for n in {ROOT_FOLDERS!r}]\n"
            "print(accel.evals.io.__file__, *(spec.origin for spec in specs))\n")
    paths = [Path(p) for p in python(code, ROOT).split()]
    assert paths[0] == ROOT / "evals" / "io.py"
    assert paths[1:] == [ROOT / name / "__init__.py" for name in ROOT_FOLDERS]


def test_import_accel_is_light():
    out = python("import sys, accel; print(accel.__version__, 'torch' in sys.modules)", ROOT)
    assert out.split()[1] == "False"
