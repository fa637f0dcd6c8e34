"""Grouped SwiGLU experts on a GPU at Nucleus-Image's real shapes: TFLOP/s and the fraction of the device's peak.

Expert-choice routing gives every expert the same number of tokens N = batch * C, C = ceil(c * S / E), so the
routed experts are one (E, N, D) x (E, D, 2I) -> SwiGLU -> (E, N, I) x (E, I, D) computation: 6 * E * N * D * I
FLOPs. Nucleus-Image: E = 64 experts, D = 2048, I = 1344; a 1024 x 1024 image is S = 4096 tokens, so C = 128 at
capacity factor 2 and 256 at 4; 512 x 512 is S = 1024. Providers:
- accel: the Triton kernels (accel.kernels.moe.grouped_swiglu_fwd), routing weight applied in the epilogue;
- bmm: the pure-torch twin (two torch.bmm calls), i.e. cuBLAS batched GEMM;
- grouped_mm: torch's F.grouped_mm with offsets (what diffusers runs with use_grouped_mm), where it exists;
- loop: diffusers' SwiGLUExperts per-expert loop.
Rows carry the device, versions, git sha and command. `--smoke` checks the script on a CPU with the Triton
interpreter at tiny shapes (its timings mean nothing; rows say smoke=true).

    python benchmarks/moe/bench_grouped_swiglu.py --json benchmarks/moe/results-gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from pathlib import Path

if "--smoke" in sys.argv:  # Triton decorates its library at import: the interpreter must be on before that
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from _bench import append_rows, max_error, source, time_ms, versions  # noqa: E402

# Dense bfloat16 tensor-core peak in TFLOP/s (vendor datasheets, without sparsity), matched in this order.
PEAK_TFLOPS = [("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("RTX 4090", 165.0), ("A10G", 70.0), ("L4", 121.0)]
EXPERTS, HIDDEN, INTER = 64, 2048, 1344


def cases(smoke: bool) -> list[dict]:
    """(name, E, N, D, I): Nucleus-Image's experts at two resolutions and its two capacity factors."""
    if smoke:
        return [dict(name="smoke", e=4, n=24, d=64, inter=48)]
    out = []
    for side, tokens in ((512, 1024), (1024, 4096)):
        for factor in (2, 4):
            n = math.ceil(factor * tokens / EXPERTS)
            out.append(dict(name=f"nucleus-{side}px-c{factor}", e=EXPERTS, n=n, d=HIDDEN, inter=INTER))
    return out


def providers(x, gate_up, down, weight) -> dict:
    from diffusers.models.transformers.transformer_nucleusmoe_image import SwiGLUExperts

    from accel.kernels.moe import grouped_swiglu_fwd, grouped_swiglu_reference

    e, n, d = x.shape
    experts = SwiGLUExperts(hidden_size=d, moe_intermediate_dim=down.shape[1], num_experts=e).to(x.device, x.dtype)
    experts.gate_up_proj.data, experts.down_proj.data = gate_up, down
    counts = torch.full((e,), n, device=x.device)
    flat = x.reshape(e * n, d)

    def weighted(out):
        return (out.float() * weight.reshape(-1, 1)).to(x.dtype)

    fns = {"accel": lambda: grouped_swiglu_fwd(x, gate_up, down, weight).reshape(e * n, d),
           "bmm": lambda: grouped_swiglu_reference(x, gate_up, down, weight).reshape(e * n, d),
           "loop": lambda: weighted(experts._run_experts_for_loop(flat, counts))}
    if hasattr(F, "grouped_mm") and x.is_cuda:
        fns["grouped_mm"] = lambda: weighted(experts._run_experts_grouped_mm(flat, counts))
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file (a list)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=200.0)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (use --smoke to check the script on a CPU)")
    args.device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    state, vers = source(args.json, args.allow_dirty), versions()
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu (Triton interpreter)"
    peak = next((tf for key, tf in PEAK_TFLOPS if key in name), None)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for case in cases(args.smoke):
        e, n, d, inter = case["e"], case["n"], case["d"], case["inter"]
        x = torch.randn(e, n, d, generator=gen).to(args.device, dtype)
        gate_up = (torch.randn(e, d, 2 * inter, generator=gen) / d ** 0.5).to(args.device, dtype)
        down = (torch.randn(e, inter, d, generator=gen) / inter ** 0.5).to(args.device, dtype)
        weight = torch.rand(e, n, generator=gen).to(args.device)
        fns = providers(x, gate_up, down, weight)
        err = max_error(fns["accel"](), fns["loop"]())
        flops = 6 * e * n * d * inter
        times = {p: time_ms(fn, args) for p, fn in fns.items()}
        for provider, (p50, p20, p80) in times.items():
            tflops = flops / (p50 * 1e-3) / 1e12
            rows.append({
                "op": "grouped_swiglu", "case": case["name"], "experts": e, "tokens_per_expert": n, "hidden": d,
                "inter": inter, "dtype": str(dtype).removeprefix("torch."), "provider": provider, "ms_p50": p50,
                "ms_p20": p20, "ms_p80": p80, "flops": flops, "tflops": tflops, "peak_tflops": peak,
                "frac_peak": tflops / peak if peak else None, "speedup_vs_loop": times["loop"][0] / p50,
                "max_abs_err_accel_vs_loop": err, "device": name, "versions": vers, **state,
                "command": " ".join([Path(sys.executable).name, *sys.argv]), "seed": args.seed, "smoke": args.smoke,
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
            frac = f"{tflops / peak:6.1%}" if peak else "     -"
            print(f"{case['name']:22s} {provider:10s} {p50:9.3f} ms {tflops:8.1f} TFLOP/s {frac} of peak, "
                  f"{times['loop'][0] / p50:5.2f}x the loop")
    if args.json:
        append_rows(args.json, rows)


if __name__ == "__main__":
    main()
