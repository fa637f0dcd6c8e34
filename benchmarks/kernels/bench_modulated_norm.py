"""Benchmark modulated_layer_norm `LN(x) * (1 + scale) + shift` at Flux / Wan widths.

    python benchmarks/kernels/bench_modulated_norm.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.modulated_norm import modulated_layer_norm, modulated_layer_norm_reference


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, b, seq, d = DTYPES[args.dtype], 1, shapes["tokens"], shapes["width"]
    x = torch.randn(b, seq, d, device=args.device, dtype=dtype)
    cases = []
    # Per sample (Flux, SD3, the built-in DiT) and per token (Wan 2.2 TI2V, heterogeneous per-token sigma).
    for kind, mod_shape in (("per_sample", (b, 1, d)), ("per_token", (b, seq, d))):
        scale, shift = (torch.randn(mod_shape, device=args.device, dtype=dtype) for _ in range(2))
        size = x.element_size()
        moved = 2 * x.numel() * size + 2 * scale.numel() * size  # read x, write out, read scale and shift
        cases.append(Case(f"{preset}/{kind}", moved, {
            "accel": lambda x=x, s=scale, h=shift: modulated_layer_norm(x, s, h),
            "eager": lambda x=x, s=scale, h=shift: modulated_layer_norm_reference(x, s, h),
        }, {"shape": [b, seq, d]}))
    return cases


if __name__ == "__main__":
    run("modulated_layer_norm", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))
