"""Benchmark particle resampling fused with the next Euler step vs gather + update.

    python benchmarks/kernels/bench_resample.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.resample import resample_euler_update, resample_euler_update_reference

PARTICLES = {"flux": 16, "wan14b": 4, "wan1.3b": 8, "smoke": 4}


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, n = DTYPES[args.dtype], PARTICLES[preset]
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    x, v = (torch.randn(n, *shapes["latent"], device=args.device, dtype=dtype) for _ in range(2))
    ancestors = torch.multinomial(torch.rand(n, generator=gen), n, replacement=True, generator=gen).to(args.device)
    moved = 3 * x.numel() * x.element_size()  # read each child's ancestor x and v, write the child
    case = Case(f"{preset}/{n}_particles", moved, {
        "accel": lambda: resample_euler_update(x, v, ancestors, 0.7, 0.6),
        "eager": lambda: resample_euler_update_reference(x, v, ancestors, 0.7, 0.6),
    }, {"shape": list(x.shape)})
    return [case]


if __name__ == "__main__":
    run("resample_euler_update", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))
