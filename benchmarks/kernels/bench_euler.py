"""Benchmark the flow Euler update on latents (Flux packed latents x 16 particles, Wan video latents).

    python benchmarks/kernels/bench_euler.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.euler import euler_update, euler_update_reference

PARTICLES = {"flux": 16, "wan14b": 2, "wan1.3b": 4, "smoke": 2}  # one latent is too small to load a GPU


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, n = DTYPES[args.dtype], PARTICLES[preset]
    x, v = (torch.randn(n, *shapes["latent"], device=args.device, dtype=dtype) for _ in range(2))
    moved = 3 * x.numel() * x.element_size()  # read x, v; write x_next
    sigma_tok = torch.rand(n, shapes["latent"][0], device=args.device)  # per token for Flux, per channel-row else
    cases = []
    for kind, (s, s_next) in (("scalar_sigma", (torch.tensor(0.7, device=args.device),
                                                 torch.tensor(0.6, device=args.device))),
                              ("per_token_sigma", (sigma_tok, sigma_tok * 0.9))):
        cases.append(Case(f"{preset}/{kind}", moved, {
            "accel": lambda s=s, sn=s_next: euler_update(x, v, s, sn),
            "eager": lambda s=s, sn=s_next: euler_update_reference(x, v, s, sn),
        }, {"shape": list(x.shape)}))
    return cases


if __name__ == "__main__":
    run("euler_update", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))
