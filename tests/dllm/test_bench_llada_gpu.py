"""The GPU benchmark script for real LLaDA checkpoints runs end to end (CPU, tiny random checkpoint: --smoke)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dllm" / "bench_llada_gpu.py"


def test_smoke_run_writes_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_llada_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    bench.main(["--smoke", str(tmp_path / "ckpt"), "--decoders", "llada,fast-dllm:cache=dual,window:window=16",
                "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["decoder"] for r in rows] == ["llada", "fast-dllm:cache=dual", "window:window=16"]
    for r in rows:
        for key in ("tokens_per_s", "speedup", "accuracy", "nfe", "positions", "device", "torch", "command", "task"):
            assert key in r
    assert rows[0]["speedup"] == 1.0 and rows[0]["nfe"] == 64
    assert bench.last_number("so 3 + 4 = 7.") == "7" and bench.last_number("1,234 apples") == "1234"
