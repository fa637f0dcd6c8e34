"""The README is a user guide whose examples run: CI runs its quick start, and these tests run every other example.

Every ```bash block (each as one script) and every ```python snippet of README.md runs as written, in a fresh
temporary working directory, with this interpreter's `accel` on PATH. A block preceded by an HTML comment
`<!-- not run: why -->` is skipped (loading a 20 GB hub model, say); the quick-start block is what CI runs.
The examples run two at a time (ACCEL_README_JOBS), since most of each one's time is a single-threaded import.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"(?:<!--(?P<note>.*?)-->\s*\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
TIMEOUT_S = 600


@dataclass(frozen=True)
class Example:
    lang: str  # "bash" | "python"
    line: int  # where the block starts in README.md
    body: str

    @property
    def name(self) -> str:
        return f"{self.lang}-line{self.line}"


def quick_start_commands() -> list[str]:
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line and not line.startswith("#")]


def readme_examples() -> list[Example]:
    """The README's bash and python blocks to run: all but the quick start and those marked `not run`."""
    text = README.read_text()
    quick = set(quick_start_commands())
    examples = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("bash", "python"):
            continue
        if m.group("note") and m.group("note").strip().startswith("not run"):
            continue
        if quick & set(m.group("body").splitlines()):
            continue
        examples.append(Example(m.group("lang"), text.count("\n", 0, m.start("body")), m.group("body")))
    return examples


def run_example(example: Example, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if example.lang == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", example.body]
    else:
        command = [sys.executable, "-c", example.body]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    examples = readme_examples()
    jobs = int(os.environ.get("ACCEL_README_JOBS", "2"))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {e.name: pool.submit(run_example, e, tmp_path_factory.mktemp(e.name)) for e in examples}
        return {name: f.result() for name, f in futures.items()}


def test_ci_runs_the_readme_quick_start():
    commands = quick_start_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


def test_readme_has_runnable_examples_and_few_skipped():
    examples = readme_examples()
    skipped = [m for m in FENCE.finditer(README.read_text()) if (m.group("note") or "").strip().startswith("not run")]
    assert {e.lang for e in examples} == {"bash", "python"}
    assert len(skipped) <= 2
    assert all(e.body.lstrip().startswith(("import", "from")) for e in examples if e.lang == "python")


@pytest.mark.parametrize("example", readme_examples(), ids=lambda e: e.name)
def test_readme_example_runs(example, example_runs):
    out = example_runs[example.name]
    assert out.returncode == 0, \
        f"README.md line {example.line}:\n{example.body}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def test_readme_is_short_and_its_links_exist():
    text = README.read_text()
    assert len(text.encode()) < 15_000
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_one_namespace_and_no_shadowing_top_level_modules(tmp_path):
    # Run outside the repository, so that only what is installed can be imported.
    code = ("import importlib.util as u; import accel.pipelines, accel.kernels, accel.evals, accel.schedulers; "
            "print([n for n in ('pipelines', 'kernels', 'evals', 'schedulers') "
            "if u.find_spec(n) and 'site-packages' not in str(u.find_spec(n).origin)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
