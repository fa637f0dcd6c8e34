"""What HSA's active-token forward saves on Flux, Wan and Nucleus-Image transformers: wall time of one model call
with every token (the model's own forward) and with k active tokens against cached K/V (accel.pipelines.dit_hsa),
at several active fractions.

The transformers are real diffusers classes built from configs (random weights: this measures compute, not
quality; quality is measured on the built-in models by `accel bench steps`). The adapter is a minimal stand-in
that calls the transformer as the pipeline does.

    python benchmarks/steps/bench_dit_hsa_forward.py --model flux --prompts 1 --seed 0 --json out.json

--kv extrapolate (the default for these families) or refresh: a partial step refreshes the inactive tokens' K/V every
other step (HSAConfig.refresh_every=2), so a row's time is the mean of a refreshing call and one between refreshes
(both also recorded), and Flux's text skips partial steps; --kv stale leaves the inactive K/V as cached and
recomputes the text (HSAConfig.kv). Timings are the best of --repeats rounds, each round timing every call once.
--text N overrides the configuration's text tokens (real Flux: 512 beside 4,096 image tokens).

--prompts is the batch (prompts per call); --size picks the configuration (small: CPU-sized; flux-dev / wan-1.3b /
wan-14b / wan-14b-720p / nucleus-image: the real models' widths and depths at 1024x1024 / 480p x 81 frames / 720p
x 81 frames / 1024x1024, for a GPU). Nucleus's MoE layers run diffusers' expert loop unless --engine (accel's
expert-choice engine, accel.moe); at a partial step each expert chooses among the active tokens. --memory-only
reports, on any machine, what HSA's caches take per forward for the configuration and each K/V mode, with the
refresh's block inputs in the model's dtype or in fp8 (DiTActiveTokens.cache_bytes, bf16 unless --dtype; the model
is built on the meta device).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

SIZES = {
    # model: size -> (transformer config, tokens layout)
    "flux": {
        "small": (dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
                       num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=128,
                       guidance_embeds=True, axes_dims_rope=(8, 28, 28)), dict(rows=32, cols=32, text=64)),
        "flux-dev": (dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                          num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                          guidance_embeds=True, axes_dims_rope=(16, 56, 56)), dict(rows=64, cols=64, text=512)),
    },
    "wan": {
        "small": (dict(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=16,
                       out_channels=16, text_dim=256, freq_dim=256, ffn_dim=2048, num_layers=6,
                       cross_attn_norm=True, qk_norm="rms_norm_across_heads"), dict(frames=4, h=32, w=32, text=64)),
        "wan-1.3b": (dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                          out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads"),
                     dict(frames=21, h=60, w=104, text=512)),
        "wan-14b": (dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                         out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads"),
                    dict(frames=21, h=60, w=104, text=512)),
        "wan-14b-720p": (dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                              out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads"),
                         dict(frames=21, h=90, w=160, text=512)),
    },
    "nucleus": {
        "small": (dict(patch_size=2, in_channels=64, out_channels=16, num_layers=6, attention_head_dim=64,
                       num_attention_heads=8, num_key_value_heads=2, joint_attention_dim=256,
                       axes_dims_rope=(16, 24, 24),
                       dense_moe_strategy="leave_first_three_blocks_dense", num_experts=16, moe_intermediate_dim=256,
                       capacity_factors=[0, 0, 0, 4, 2, 2]), dict(rows=32, cols=32, text=64)),
        # the released checkpoint's configuration (shared/notes: 32 blocks, 64 experts, capacity 4, 4, then 2)
        "nucleus-image": (dict(patch_size=2, in_channels=64, out_channels=16, num_layers=32, attention_head_dim=128,
                               num_attention_heads=16, num_key_value_heads=4, joint_attention_dim=4096,
                               axes_dims_rope=(16, 56, 56), dense_moe_strategy="leave_first_three_blocks_dense",
                               num_experts=64, moe_intermediate_dim=1344,
                               capacity_factors=[0, 0, 0, 4, 4] + [2] * 27), dict(rows=64, cols=64, text=512)),
    },
}


class _Stand:
    """The adapter surface DiTActiveTokens uses: transformer(s), velocity, token_layout, nfe."""

    def __init__(self, model_name, transformer, layout, text, batch, device, dtype, gen):
        from accel.core.denoiser import TokenLayout

        self.name, self.transformer, self.nfe = model_name, transformer, 0
        self.pipe = type("P", (), {"transformer": transformer, "transformer_2": None})()
        c = transformer.config
        self.layout = TokenLayout(*layout)
        width = c.text_dim if model_name == "wan" else c.joint_attention_dim
        self.enc = torch.randn(batch, text, width, generator=gen).to(device, dtype)
        if model_name == "flux":
            self.pooled = torch.randn(batch, c.pooled_projection_dim, generator=gen).to(device, dtype)
            self.txt_ids = torch.zeros(text, 3, device=device)
            r, q = torch.meshgrid(torch.arange(layout[1]), torch.arange(layout[2]), indexing="ij")
            self.img_ids = torch.stack([torch.zeros_like(r), r, q], -1).flatten(0, 1).float().to(device)

    def token_layout(self, x):
        return self.layout

    def velocity(self, x, sigma, cond):
        b = x.shape[0]
        t = sigma.to(x.device).expand(b).to(x.dtype)
        self.nfe += b
        if self.name == "nucleus":
            return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=self.enc,
                                    img_shapes=[(1, self.layout.rows, self.layout.cols)] * b, return_dict=False)[0]
        if self.name == "flux":
            return self.transformer(hidden_states=x, timestep=t, guidance=torch.full_like(t, 3.5),
                                    pooled_projections=self.pooled, encoder_hidden_states=self.enc,
                                    txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]
        return self.transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=self.enc,
                                return_dict=False)[0]


def _partial(run, x, sigma, active, refresh: bool):
    run.refresh_kv = refresh
    return run(x, sigma, active)


def _time_rounds(calls: dict, repeats: int, sync) -> dict:
    """Each call's best wall time over `repeats` rounds (each round times every call once, after one untimed warm-up
    call each), so a slow spell of the machine falls on every call alike."""
    for fn in calls.values():
        fn()
    sync()
    best = {key: float("inf") for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


@torch.no_grad()
def bench(model_name: str, size: str, batch: int, seed: int, fractions: list[float], repeats: int, device: str,
          dtype: torch.dtype, kv: str = "extrapolate", text: int | None = None, memory_only: bool = False,
          engine: bool = False) -> list[dict]:
    from diffusers import FluxTransformer2DModel, NucleusMoEImageTransformer2DModel, WanTransformer3DModel

    from accel.core.denoiser import Cond
    from accel.pipelines.dit_hsa import FluxActiveTokens, NucleusActiveTokens, WanActiveTokens

    config, shape = SIZES[model_name][size]
    shape = shape | ({"text": text} if text else {})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if memory_only:  # the caches' sizes only: no weights, no compute (any size, any machine)
        device = "meta"
    build = torch.device("meta") if memory_only else contextlib.nullcontext()
    if model_name == "flux":
        with build:
            model = FluxTransformer2DModel(**config)
        model = model.to(device).eval()
        layout = (1, shape["rows"], shape["cols"])
        x = torch.randn(batch, shape["rows"] * shape["cols"], config["in_channels"], generator=gen)
        cls = FluxActiveTokens
    elif model_name == "nucleus":
        from accel.pipelines.tiny_nucleus import init_experts

        with build:
            model = NucleusMoEImageTransformer2DModel(**config)
        if not memory_only:
            init_experts(model, seed)  # diffusers leaves the packed expert weights as torch.empty
        model = model.to(device).eval()
        layout = (1, shape["rows"], shape["cols"])
        x = torch.randn(batch, shape["rows"] * shape["cols"], config["in_channels"], generator=gen)
        cls = NucleusActiveTokens
        if engine and not memory_only:
            from accel.moe import apply_expert_choice

            apply_expert_choice(model)
    else:
        with build:
            model = WanTransformer3DModel(**config)
        model = model.to(device).eval()
        layout = (shape["frames"], shape["h"] // 2, shape["w"] // 2)
        x = torch.randn(batch, config["in_channels"], shape["frames"], shape["h"], shape["w"], generator=gen)
        cls = WanActiveTokens
    if dtype != torch.float32:
        model.to(dtype)
    x = x.to(device, dtype)
    d = _Stand(model_name, model, layout, shape["text"], batch, device, dtype, gen)
    run = cls.for_run(d, Cond(batch=batch, passes=1, data={"embeds": d.enc}), kv)
    n = d.layout.num_tokens
    cache = {f"cache_bytes_{m}": run.cache_bytes(x, m, False) for m in ("extrapolate", "refresh", "stale")}
    cache |= {f"cache_bytes_{m}_fp8": run.cache_bytes(x, m, True) for m in ("extrapolate", "refresh")}
    params = sum(p.numel() for p in model.parameters())
    info = dict(model=model_name, size=size, tokens=n, text_tokens=shape["text"], batch=batch, params=params,
                dtype=str(dtype).removeprefix("torch."), seed=seed, kv=kv) | cache
    if model_name == "nucleus":
        info["moe"] = "accel engine" if engine else "diffusers loop"
    if memory_only:
        return [info]
    sigma = torch.tensor(0.5)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    every = torch.arange(n, device=device).expand(batch, n)
    run(x, sigma, every)  # fills the caches
    calls = {"full": lambda: d.velocity(x, sigma, None)}
    for f in fractions:
        k = max(1, round(f * n))
        active = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(batch)]).to(device)
        for refresh in (True, False) if kv != "stale" else (True,):
            calls[(f, refresh)] = lambda a=active, r=refresh: _partial(run, x, sigma, a, r)
    best = _time_rounds(calls, repeats, sync)
    rows = [{"active_fraction": 1.0, "seconds": best["full"], "speedup": 1.0}]
    for f in fractions:
        row = {"active_fraction": f}
        if kv != "stale":  # refresh_every=2: one refreshing call and one between per two steps
            row |= {"seconds_refresh": best[(f, True)], "seconds_between": best[(f, False)]}
            row["seconds"] = (best[(f, True)] + best[(f, False)]) / 2
        else:
            row["seconds"] = best[(f, True)]
        rows.append(row | {"speedup": best["full"] / row["seconds"]})
    for r in rows:
        r.update(info)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SIZES), default="flux")
    ap.add_argument("--size", default="small", help="small (CPU), flux-dev, wan-1.3b, ... (GPU; see above)")
    ap.add_argument("--prompts", type=int, default=1, help="the batch: prompts per model call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", default="0.75,0.5,0.25")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--kv", choices=("extrapolate", "refresh", "stale"), default="extrapolate",
                    help="the inactive tokens' K/V")
    ap.add_argument("--text", type=int, default=None, help="text tokens (default: the size's)")
    ap.add_argument("--memory-only", action="store_true",
                    help="report the HSA caches' size per K/V mode and exit (meta tensors: no weights, no compute)")
    ap.add_argument("--engine", action="store_true",
                    help="nucleus: run the MoE layers through accel's expert-choice engine (default: diffusers' loop)")
    ap.add_argument("--json", default=None, help="write the rows here (atomically)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    args = ap.parse_args(argv)
    if args.size not in SIZES[args.model]:
        ap.error(f"--size for {args.model} must be one of {', '.join(SIZES[args.model])}")
    if args.prompts < 1:
        ap.error("--prompts must be >= 1")
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        ap.error(f"--fractions takes comma-separated numbers in (0, 1), got {args.fractions!r}")
    if not all(0 < f < 1 for f in fractions):
        ap.error(f"--fractions takes numbers in (0, 1), got {args.fractions!r}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    from accel.evals.io import check_writable, require_clean, run_info, write_json

    state = None  # without --json, run_info reads the code's state after the run
    if args.json:
        try:
            check_writable(args.json)
            state = require_clean(args.allow_dirty)
        except ValueError as e:
            ap.error(str(e))
    if args.text is not None and args.text < 1:
        ap.error("--text must be >= 1")
    if args.engine and args.model != "nucleus":
        ap.error("--engine applies to --model nucleus (the MoE transformer)")
    if args.memory_only and args.dtype is None:
        dtype = torch.bfloat16  # as the real models run
    rows = bench(args.model, args.size, args.prompts, args.seed, fractions, args.repeats, args.device, dtype,
                 args.kv, args.text, args.memory_only, args.engine)
    meta = run_info(state) | {"command": "python " + " ".join(sys.argv)}
    for r in rows:
        r.update(meta)
        if args.memory_only:
            sizes = ", ".join(f"kv={m.replace('_fp8', ' (fp8 inputs)')} {r[f'cache_bytes_{m}'] / 2**30:.2f} GiB"
                              for m in ("extrapolate", "extrapolate_fp8", "refresh", "refresh_fp8", "stale"))
            print(f"{r['model']} {r['size']} ({r['tokens']} image tokens, batch {r['batch']}, {r['dtype']}): "
                  f"caches {sizes}")
            continue
        print(f"{r['model']} {r['size']} active {r['active_fraction']:.2f}: {r['seconds'] * 1000:.1f} ms "
              f"({r['speedup']:.2f}x)")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
