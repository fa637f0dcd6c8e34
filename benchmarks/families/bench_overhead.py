"""Wrapper overhead at the default path: each family's pipeline call against the same call through
accelerate_pipeline (issue 23's target: within 2% of the pipeline's own call).

Method (STYLE.md, Benchmarks):
- Pipelines: a tiny seeded one per family (accel.pipelines.tiny, tiny_families, tiny_nucleus: the real model
  classes at a tiny width, random weights, built offline), fp32, and the built-in shapes image / video models
  (accel.assets). Every call uses the family's guidance (CFG or embedded), `--steps` steps, output_type "np".
- Each family runs `--prompts` prompts of the shapes prompt set (seed `--seed`), each with a generator seeded from
  `--seed`, through the pipeline's own __call__ ("pipeline") and through the wrapper ("accel"), with the same
  arguments. The outputs must be equal (max_abs_diff, 0 expected), so both did the same work.
- Interleaved: rounds over (repeat, prompt); in each round the two methods run in an order that alternates round by
  round (accel.dllm.bench.round_orders), after one untimed warm-up round; threads set explicitly (`--threads`).
- Per repeat each method's seconds are summed over the prompts; ratio = accel / pipeline within a repeat (paired).
  A row gives ratio (median over repeats) with ratio_min / ratio_max and ratio_spread ((max - min) / median),
  pipeline_ms (median per call) and overhead_ms (median over repeats of (accel - pipeline) seconds per call).

On these tiny CPU models a call takes milliseconds, so the wrapper's fixed Python cost per call and per step
(binding the call, the adapter's prepare, the sampler's bookkeeping) weighs far more in the ratio than on a real
model, whose call takes seconds to minutes: overhead_ms is the figure that carries over to real sizes (the ratio
there is about 1 + overhead_ms / the real call's ms).

    OMP_NUM_THREADS=1 python benchmarks/families/bench_overhead.py --prompts 4 --repeats 5 \\
        --json benchmarks/families/overhead-cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

STEPS = 4


def _image(size: int = 64):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def families() -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    """family -> (builder, call arguments besides prompt, generator, num_inference_steps and output_type)."""
    from accel.models import load_pipeline
    from accel.pipelines import tiny, tiny_families, tiny_nucleus

    image, text, layers = dict(height=64, width=64), dict(max_sequence_length=16), (1, 2, 3)
    return {
        "flux": (tiny.build_flux, image | text | dict(guidance_scale=3.5)),
        "flux-kontext": (tiny_families.build_flux_kontext,
                         image | text | dict(image=_image(), max_area=64 * 64, _auto_resize=False)),
        "flux2": (tiny_families.build_flux2, image | text | dict(guidance_scale=3.0, text_encoder_out_layers=layers)),
        "flux2-klein": (tiny_families.build_flux2_klein,
                        image | text | dict(guidance_scale=3.0, text_encoder_out_layers=layers)),
        "chroma": (tiny_families.build_chroma, image | text | dict(guidance_scale=4.0)),
        "sd3": (tiny.build_sd3, image | text | dict(guidance_scale=5.0)),
        "qwenimage": (tiny_families.build_qwenimage, image | text | dict(true_cfg_scale=3.0, negative_prompt="a dog")),
        "zimage": (tiny_families.build_zimage, image | text | dict(guidance_scale=3.0)),
        "nucleus": (tiny_nucleus.build_nucleus, image | dict(guidance_scale=4.0)),
        "wan": (tiny.build_wan, image | text | dict(num_frames=9, guidance_scale=5.0)),
        "wan2.2": (lambda: tiny.build_wan(boundary_ratio=0.875),
                   image | text | dict(num_frames=9, guidance_scale=4.0, guidance_scale_2=2.0)),
        "ltx": (tiny_families.build_ltx, text | dict(height=32, width=32, num_frames=9, guidance_scale=3.0)),
        "hunyuanvideo15": (tiny_families.build_hunyuanvideo15, dict(height=32, width=32, num_frames=5)),
        "shapes": (lambda: load_pipeline("shapes"), dict(guidance_scale=2.0)),
        "shapes-video": (lambda: load_pipeline("shapes-video"), dict(guidance_scale=2.0)),
    }


def _frames(out) -> np.ndarray:
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


def bench_family(pipe, call: dict[str, Any], prompts: list[str], seed: int, steps: int, repeats: int) -> dict:
    """One row: the pipeline's call and the wrapped call on every prompt, interleaved (see the module docstring)."""
    from accel import accelerate_pipeline
    from accel.dllm.bench import _spread, round_orders

    fast = accelerate_pipeline(pipe)
    methods = {"pipeline": pipe, "accel": fast}
    names = list(methods)

    def run(method: str, prompt: str):
        kw = call | dict(prompt=prompt, num_inference_steps=steps, output_type="np")
        start = time.perf_counter()
        out = methods[method](**kw, generator=torch.Generator().manual_seed(seed))
        return time.perf_counter() - start, out

    for method in names:  # warm-up: first-call costs (allocator, lazy imports) land on no timed call
        run(method, prompts[0])
    seconds = {m: [0.0] * repeats for m in names}
    outputs: dict[tuple[str, int], np.ndarray] = {}
    for r, i, order in round_orders(len(names), len(prompts), repeats):
        for k in order:
            elapsed, out = run(names[k], prompts[i])
            seconds[names[k]][r] += elapsed
            if r == 0:
                outputs[names[k], i] = _frames(out)
    path = fast.stats.path
    diff = max(float(np.abs(outputs["accel", i] - outputs["pipeline", i]).max()) for i in range(len(prompts)))
    n = len(prompts)
    ratio = _spread([a / p for a, p in zip(seconds["accel"], seconds["pipeline"])])
    return {
        "pipeline_class": type(pipe).__name__, "path": path, "nfe_per_call": fast.stats.nfe, "steps": steps,
        "ratio": ratio[0], "ratio_min": ratio[1], "ratio_max": ratio[2], "ratio_spread": ratio[3],
        "pipeline_ms": 1e3 * statistics.median(seconds["pipeline"]) / n,
        "accel_ms": 1e3 * statistics.median(seconds["accel"]) / n,
        "overhead_ms": 1e3 * statistics.median([(a - p) / n for a, p in zip(seconds["accel"], seconds["pipeline"])]),
        "max_abs_diff": diff, "prompts": n, "repeats": repeats, "seed": seed,
        "order": "interleaved per prompt, alternating each round, one warm-up round",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=None,
                        help="comma-separated families (default: all): " + ", ".join(families()))
    parser.add_argument("--prompts", type=int, default=4, help="prompts per family (the shapes prompt set)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the prompts")
    parser.add_argument("--steps", type=int, default=STEPS, help="num_inference_steps of every call")
    parser.add_argument("--seed", type=int, default=0, help="picks the prompts and seeds every call's generator")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    args = parser.parse_args()
    known = families()
    args.families = list(known) if args.families is None else [f.strip() for f in args.families.split(",")]
    unknown = [f for f in args.families if f not in known]
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; allowed: {', '.join(known)}")
    if args.prompts < 1 or args.repeats < 1 or args.steps < 1:
        parser.error("--prompts, --repeats and --steps must be >= 1")
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"{args.json} exists (pass --overwrite to replace it)")
    return args


def main() -> None:
    from accel.evals.io import check_writable, require_clean, run_info, write_json
    from accel.shapes.prompts import prompt_set

    args = parse_args()
    torch.set_num_threads(args.threads)
    import diffusers
    import transformers

    # Loading bars and the tiny tokenizers' truncation warnings would bury the rows.
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    state = require_clean(args.allow_dirty) if args.json is not None else None
    if args.json is not None:
        check_writable(args.json)
    prompts = [p["prompt"] for p in prompt_set(args.prompts, args.seed)]
    rows = []
    for name in args.families:
        builder, call = families()[name]
        with torch.no_grad():
            row = {"family": name} | bench_family(builder(), call, prompts, args.seed, args.steps, args.repeats)
        rows.append(row)
        spread = "-" if row["ratio_spread"] is None else f"{row['ratio_spread']:.0%}"
        print(f"{name:15s} {row['path']:8s} ratio {row['ratio']:.3f} (spread {spread})  pipeline "
              f"{row['pipeline_ms']:8.1f} ms  overhead {row['overhead_ms']:+7.2f} ms/call  "
              f"diff {row['max_abs_diff']:.1e}", flush=True)
    info = run_info(state) | {"command": " ".join(["python", *sys.argv]), "threads": args.threads}
    if args.json is not None:
        write_json(args.json, [row | info for row in rows])


if __name__ == "__main__":
    main()
