"""benchmarks/gpu_suite.sh, the prepared run for a session lent a GPU: its smoke mode runs every step at tiny sizes on
a CPU and writes their rows (slow: about a minute); a bad part is refused."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bad_part_is_refused():
    out = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "all"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "usage: gpu_suite.sh kernels|models|smoke" in out.stderr


@pytest.mark.slow
def test_smoke_runs_every_step(tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "smoke"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("exit 0:") == 11 and "exit 1" not in out.stdout
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    assert len({r["op"] for r in kernels}) == 7
    for size in ("flux-dev", "wan-1.3b", "nucleus-image"):
        assert json.loads((tmp_path / f"hsa-forward-{size}.json").read_text())
