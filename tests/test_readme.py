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


def test_no_top_level_modules_that_shadow_other_packages():
    import importlib.util

    for name in ("pipelines", "kernels", "evals", "schedulers"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "accel" not in str(spec.origin or ""), name
