"""Shared harness for the kernel benchmarks: timing, bandwidth, the device's peak, and JSON rows.

Each bench_<op>.py builds Cases (a name, the minimal bytes the op must move, and one callable per provider) and
calls `run(op, cases_fn, description)`. Providers: `accel` (the Triton kernel through its public function),
`eager` (the pure-torch reference twin, i.e. the unfused upstream ops) and `compile` (torch.compile of that
reference: Inductor's own fusion). Rows carry the device, versions, git sha and command (STYLE.md, Benchmarks).

`--smoke` runs tiny shapes on the CPU with the Triton interpreter, to check a script end to end on a machine
without a GPU; its timings mean nothing and its rows say smoke=true.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if "--smoke" in sys.argv:  # Triton decorates its library at import: the interpreter must be on before that
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

# Peak DRAM bandwidth in GB/s (vendor datasheets), matched against torch.cuda.get_device_name in this order.
PEAK_GBPS = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40GB SXM4 / PCIe
    ("L40S", 864.0),
    ("RTX 4090", 1008.0),
    ("A10G", 600.0),
    ("L4", 300.0),
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROVIDERS = ("accel", "eager", "compile")


@dataclass
class Case:
    """One benchmark shape: `fns[provider]()` runs the op once; `bytes` is the minimal DRAM traffic."""

    name: str
    bytes: int
    fns: dict[str, Callable[[], object]]
    meta: dict = field(default_factory=dict)


def parse_args(description: str, presets: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file (a list)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--preset", choices=presets, action="append", help="shapes to run (default: all)")
    parser.add_argument("--providers", choices=PROVIDERS, nargs="+", default=None,
                        help="default: all three on CUDA; accel and eager with --smoke")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=200.0)
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the device's peak bandwidth")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("the kernel benchmarks need a CUDA GPU (use --smoke to check the script on a CPU)")
    args.presets = args.preset or presets
    args.providers = args.providers or (["accel", "eager"] if args.smoke else list(PROVIDERS))
    args.device = torch.device("cpu" if args.smoke else "cuda")
    torch.manual_seed(args.seed)
    return args


def device_info(args) -> dict:
    if args.device.type == "cuda":
        name = torch.cuda.get_device_name(args.device)
        peak = args.peak_gbps or next((gbps for key, gbps in PEAK_GBPS if key in name), None)
    else:
        name, peak = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", None
    return {"device": name, "peak_gbps": peak}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for pkg in ("accel", "torch", "triton", "diffusers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def source(json_path: Path | None, allow_dirty: bool) -> dict:
    """The code the rows come from (git_sha, dirty, diff_sha256); refuses to record a dirty checkout unless asked."""
    from accel.evals.io import require_clean, source_state

    if json_path is None:
        return source_state()
    try:
        return require_clean(allow_dirty)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a JSON list file, atomically."""
    from accel.evals.io import write_json

    existing = json.loads(path.read_text()) if path.exists() else []
    write_json(path, existing + rows)


def time_ms(fn: Callable[[], object], args) -> tuple[float, float, float]:
    """(p50, p20, p80) milliseconds: triton.testing.do_bench on CUDA (it flushes L2 between runs)."""
    if args.device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, quantiles=[0.5, 0.2, 0.8])
        return p50, p20, p80
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[1], times[0], times[-1]


def max_error(a, b) -> float:
    """Largest absolute difference between two outputs (tensors or tuples of tensors)."""
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


def run(op: str, make_cases: Callable[[argparse.Namespace, str], list[Case]], description: str,
        presets: list[str]) -> list[dict]:
    """Parse the command line, time every case and provider, print a table and append JSON rows."""
    args = parse_args(description, presets)
    if args.smoke:  # CPU tensors would take the reference; route `accel` to the Triton interpreter instead
        from accel.kernels import dispatch

        dispatch.use_triton = lambda *tensors: True
    info, vers, state = device_info(args), versions(), source(args.json, args.allow_dirty)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    rows = []
    for preset in args.presets:
        for case in make_cases(args, preset):
            fns = dict(case.fns)
            if "compile" in args.providers:
                fns["compile"] = torch.compile(case.fns["eager"], fullgraph=False, dynamic=False)
            # Quality next to speed: the kernel's largest deviation from the eager reference on these inputs.
            err = max_error(fns["accel"](), fns["eager"]()) if "accel" in args.providers else None
            times = {p: time_ms(fns[p], args) for p in args.providers}
            for provider, (p50, p20, p80) in times.items():
                gbps = case.bytes / (p50 * 1e-3) / 1e9
                row = {
                    "op": op, "case": case.name, "preset": preset, "dtype": args.dtype, "provider": provider,
                    "ms_p50": p50, "ms_p20": p20, "ms_p80": p80, "bytes": case.bytes, "gbps": gbps,
                    "peak_gbps": info["peak_gbps"],
                    "frac_peak": gbps / info["peak_gbps"] if info["peak_gbps"] else None,
                    "speedup_vs_eager": times["eager"][0] / p50 if "eager" in times else None,
                    "speedup_vs_compile": times["compile"][0] / p50 if "compile" in times else None,
                    "max_abs_err_vs_eager": err, "device": info["device"], "versions": vers, **state,
                    "command": command, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "seed": args.seed,
                    "smoke": args.smoke,
                    "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    **case.meta,
                }
                rows.append(row)
                frac = f"{row['frac_peak']:6.1%}" if row["frac_peak"] else "     -"
                print(f"{op:24s} {case.name:28s} {provider:8s} {p50:9.4f} ms {gbps:8.1f} GB/s {frac} of peak")
    if args.json:
        append_rows(args.json, rows)
    return rows


# Model shapes (batch 1; guidance-distilled Flux runs one pass per step, CFG doubles the batch elsewhere).
# Flux.1-dev at 1024x1024: 4096 image + 512 text tokens, width 3072, 24 heads of 128; packed latents 64 channels.
# Wan 2.1 14B at 1280x720, 81 frames: 21 x 45 x 80 = 75600 tokens, width 5120, 40 heads of 128; latents 16 channels.
# Wan 2.1 1.3B at 832x480, 81 frames: 21 x 30 x 52 = 32760 tokens, width 1536, 12 heads of 128.
# LLaDA-8B decoding: vocabulary 126464, 512 positions (prompt + generation).
MODELS = {
    "flux": dict(tokens=4096 + 512, width=3072, heads=24, head_dim=128, latent=(4096, 64)),
    "wan14b": dict(tokens=75600, width=5120, heads=40, head_dim=128, latent=(16, 21, 90, 160)),
    "wan1.3b": dict(tokens=32760, width=1536, heads=12, head_dim=128, latent=(16, 21, 60, 104)),
    "smoke": dict(tokens=96, width=128, heads=2, head_dim=64, latent=(96, 16)),
}
VOCAB = {"llada": dict(rows=512, vocab=126464), "llada_b8": dict(rows=8 * 512, vocab=126464),
         "smoke": dict(rows=6, vocab=5000)}


def presets(*names: str) -> list[str]:
    """The presets a script offers: its model shapes plus `smoke` (chosen automatically with --smoke)."""
    return [*names, "smoke"]


def model_presets(args, preset: str) -> dict | None:
    """The shapes of a preset, or None to skip it (smoke shapes run only with --smoke, and only they do)."""
    if args.smoke != (preset == "smoke"):
        return None
    return MODELS[preset]
