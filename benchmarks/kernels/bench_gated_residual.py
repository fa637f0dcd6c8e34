"""Benchmark gated_residual `x + gate * y` at Flux / Wan widths.

    python benchmarks/kernels/bench_gated_residual.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.gated_residual import gated_residual, gated_residual_reference


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, b, seq, d = DTYPES[args.dtype], 1, shapes["tokens"], shapes["width"]
    x, y = (torch.randn(b, seq, d, device=args.device, dtype=dtype) for _ in range(2))
    cases = []
    for kind, gate_shape in (("per_sample", (b, 1, d)), ("per_token", (b, seq, d))):
        gate = torch.randn(gate_shape, device=args.device, dtype=dtype)
        moved = 3 * x.numel() * x.element_size() + gate.numel() * gate.element_size()  # read x, y, gate; write
        cases.append(Case(f"{preset}/{kind}", moved, {
            "accel": lambda x=x, y=y, g=gate: gated_residual(x, y, g),
            "eager": lambda x=x, y=y, g=gate: gated_residual_reference(x, y, g),
        }, {"shape": [b, seq, d]}))
    return cases


if __name__ == "__main__":
    run("gated_residual", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))
