"""The expert-choice engine against diffusers' expert loop on CPU, at Nucleus-Image's routing layout, tiny width.

The model is NucleusMoEImageTransformer2DModel with the released checkpoint's routing configuration (64 routed
experts + a shared one, softmax scores, route_scale 2.5, the first three blocks dense, capacity factors 4, 4, then
2, grouped-query attention 4:1) at a width a CPU runs in milliseconds: hidden 128, expert inner dim 84 (the real
1344 scaled by 128 / 2048), 8 blocks, a 256 x 256 image (256 tokens), one sample per forward as the pipeline runs
each CFG branch. Two levels:
- moe_layers: the MoE layers alone, on the inputs they receive in one forward;
- forward: the whole transformer forward.
Providers: diffusers' per-expert loop (its default), diffusers' `F.grouped_mm` path (what the released config's
use_grouped_mm selects), and the engine; each repeat runs all three in a rotating order. Rows also carry the checks
that matter: identical routing (the tokens each expert receives) and the largest output difference from the loop.
Read the paired median ratio; absolute times depend on the machine's load (recorded as load_average).

    OMP_NUM_THREADS=1 python benchmarks/moe/bench_engine_cpu.py --seed 0 --json benchmarks/moe/engine-cpu-seed0.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

# Nucleus-Image's released routing layout (shared/notes/papers-salt-raise-dllm-moe.md, section 5), tiny width.
CONFIG = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=8, attention_head_dim=32, num_attention_heads=4,
              num_key_value_heads=1, joint_attention_dim=64, axes_dims_rope=(8, 12, 12), moe_enabled=True,
              dense_moe_strategy="leave_first_three_blocks_dense", num_experts=64, moe_intermediate_dim=84,
              capacity_factors=[0, 0, 0, 4, 4, 2, 2, 2], route_scale=2.5, use_sigmoid=False)
IMAGE_TOKENS = (16, 16)  # a 256 x 256 image: x8 VAE, 2x2 patches
TEXT_TOKENS = 64


def build(seed: int):
    from diffusers import NucleusMoEImageTransformer2DModel
    from diffusers.models.transformers.transformer_nucleusmoe_image import SwiGLUExperts

    torch.manual_seed(seed)
    model = NucleusMoEImageTransformer2DModel(**CONFIG).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers leaves the packed expert weights as torch.empty
        for m in model.modules():
            if isinstance(m, SwiGLUExperts):
                for w in (m.gate_up_proj, m.down_proj):
                    w.copy_(torch.randn(w.shape, generator=gen) / w.shape[1] ** 0.5)
    rows, cols = IMAGE_TOKENS
    inputs = dict(hidden_states=torch.randn(1, rows * cols, CONFIG["in_channels"], generator=gen),
                  encoder_hidden_states=torch.randn(1, TEXT_TOKENS, CONFIG["joint_attention_dim"], generator=gen),
                  timestep=torch.tensor([0.6]), img_shapes=[(1, rows, cols)], return_dict=False)
    return model, inputs


def moe_inputs(model, inputs) -> list[tuple]:
    """(layer, args, kwargs) of every MoE layer call in one forward."""
    from accel.moe import moe_layers

    calls, handles = [], []
    for layer in moe_layers(model):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, kw: calls.append((m, a, kw)), with_kwargs=True))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


@contextlib.contextmanager
def provider(model, name: str):
    """The model as one provider computes it: diffusers' loop (its default), diffusers' F.grouped_mm path (the
    released checkpoint's config sets use_grouped_mm), or the expert-choice engine."""
    from diffusers.models.transformers.transformer_nucleusmoe_image import SwiGLUExperts

    from accel.moe import apply_expert_choice

    experts = [m for m in model.modules() if isinstance(m, SwiGLUExperts)]
    handle = apply_expert_choice(model) if name == "accel_engine" else None
    for m in experts:
        m.use_grouped_mm = name == "diffusers_grouped_mm"
    try:
        yield
    finally:
        for m in experts:
            m.use_grouped_mm = False
        if handle is not None:
            handle.remove()


PROVIDERS = ("diffusers_loop", "diffusers_grouped_mm", "accel_engine")


def interleaved(run: Callable[[], torch.Tensor], model, repeats: int) -> tuple[dict, dict]:
    """Every provider once per repeat, in a rotating order (load and order effects hit all alike); times per
    provider and each provider's largest output difference from diffusers' loop."""
    from accel.evals.timing import round_orders

    def timed(name):
        with provider(model, name):
            start = time.perf_counter()
            out = run()
            return time.perf_counter() - start, out

    for name in PROVIDERS:  # warm-up
        timed(name)
    times, diff = {name: [] for name in PROVIDERS}, {name: 0.0 for name in PROVIDERS}
    for _, _, order in round_orders(len(PROVIDERS), 1, repeats):
        results = {PROVIDERS[k]: timed(PROVIDERS[k]) for k in order}
        for name, (seconds, out) in results.items():
            times[name].append(seconds)
            diff[name] = max(diff[name], float((out - results["diffusers_loop"][1]).abs().max()))
    return times, diff


def routing_identical(model, inputs) -> bool:
    """The tokens each expert receives under the engine's routing are the ones diffusers' layer hands its experts."""
    from accel.moe import capacity_tokens, expert_choice, router_scores

    ok = True
    for layer, args, kwargs in moe_inputs(model, inputs):
        captured = []
        hook = layer.experts.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        try:
            with torch.no_grad():
                layer(*args, **kwargs)
                hidden, unmodulated = args
                capacity = capacity_tokens(layer.capacity_factor, hidden.shape[1], layer.num_experts)
                routing = expert_choice(router_scores(layer, unmodulated, kwargs["timestep"]), capacity,
                                        layer.route_scale)
        finally:
            hook.remove()
        ok &= torch.equal(hidden.reshape(-1, hidden.shape[-1])[routing.tokens], captured[0])
    return ok


def summary(times: dict, name: str) -> dict:
    """The provider's speed-up over diffusers' loop: the paired ratio (loop / provider within a repeat)."""
    from accel.evals.timing import quartiles

    q1, median, q3 = quartiles([b / e for b, e in zip(times["diffusers_loop"], times[name])])
    return {"speedup_vs_loop_paired_median": median, "speedup_vs_loop_paired_q1": q1,
            "speedup_vs_loop_paired_q3": q3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file (a list)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    parser.add_argument("--repeats", type=int, default=20, help="pairs per level")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from accel.evals.io import check_writable, require_clean, run_info, write_json
    from accel.kernels.dispatch import use_triton

    if args.json:
        check_writable(args.json)
    state = require_clean(args.allow_dirty)
    model, inputs = build(args.seed)
    calls = moe_inputs(model, inputs)

    def layers():
        with torch.no_grad():
            return torch.cat([layer(*a, **kw).flatten() for layer, a, kw in calls])

    def forward():
        with torch.no_grad():
            return model(**inputs)[0]

    identical = routing_identical(model, inputs)
    info = run_info(state)
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    common = {"config": CONFIG, "image_tokens": IMAGE_TOKENS[0] * IMAGE_TOKENS[1], "batch": 1,
              "moe_layers": len(calls), "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "expert_path": "triton" if use_triton(inputs["hidden_states"]) else "reference (batched matmuls)",
              "load_average": os.getloadavg(), "routing_identical": identical, "seed": args.seed,
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info}
    rows = []
    for level, run in (("moe_layers", layers), ("forward", forward)):
        times, diff = interleaved(run, model, args.repeats)
        for name in PROVIDERS:
            stats = summary(times, name)
            rows.append({"bench": "moe_engine_cpu", "level": level, "provider": name, **common,
                         "repeats": len(times[name]), "s_median": statistics.median(times[name]),
                         "s_all": times[name], "max_abs_diff_vs_loop": diff[name], **stats})
            print(f"{level:10s} {name:21s} {statistics.median(times[name]) * 1e3:8.2f} ms; speed-up vs the loop "
                  f"(paired median) {stats['speedup_vs_loop_paired_median']:.2f}x (quartiles "
                  f"{stats['speedup_vs_loop_paired_q1']:.2f}-{stats['speedup_vs_loop_paired_q3']:.2f}); "
                  f"max |diff| {diff[name]:.2e}")
    print(f"routing identical to diffusers': {identical}")
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.exists() else []
        write_json(args.json, previous + rows)


if __name__ == "__main__":
    main()
