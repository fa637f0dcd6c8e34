"""The README's quick start is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_quick_start():
    commands = quick_start_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


def test_one_namespace_and_no_shadowing_top_level_modules(tmp_path):
    # Run outside the repository, so that only what is installed can be imported.
    import subprocess
    import sys

    code = ("import importlib.util as u; import accel.pipelines, accel.kernels, accel.evals, accel.schedulers; "
            "print([n for n in ('pipelines', 'kernels', 'evals', 'schedulers') "
            "if u.find_spec(n) and 'site-packages' not in str(u.find_spec(n).origin)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
