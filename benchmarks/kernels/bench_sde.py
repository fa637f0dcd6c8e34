"""Benchmark the SDE (Euler-Maruyama) update with in-kernel noise vs torch.randn + the update.

    python benchmarks/kernels/bench_sde.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.sde import sde_update, sde_update_reference

PARTICLES = {"flux": 16, "wan14b": 2, "wan1.3b": 4, "smoke": 2}


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, n = DTYPES[args.dtype], PARTICLES[preset]
    x, drift = (torch.randn(n, *shapes["latent"], device=args.device, dtype=dtype) for _ in range(2))
    dt, g = torch.full((n,), 0.05, device=args.device), torch.full((n,), 0.8, device=args.device)
    moved = 3 * x.numel() * x.element_size()  # read x, drift; write x_next (the noise never touches memory)
    case = Case(f"{preset}/per_sample", moved, {
        "accel": lambda: sde_update(x, drift, dt, g, seed=args.seed),
        "eager": lambda: sde_update_reference(x, drift, dt, g, seed=args.seed),
    }, {"shape": list(x.shape), "note": "max_abs_err_vs_eager compares different noise draws"})
    return [case]


if __name__ == "__main__":
    run("sde_update", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))
