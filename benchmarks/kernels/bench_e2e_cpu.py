"""End-to-end effect of kernel dispatch on CPU: the shapes pipeline with and without apply_fused_kernels.

On CPU the fused hooks dispatch to the pure-torch references, so the images must be identical, and the time must
stay the same: the hooks add only Python-level checks, about 5 us per fused call. Two levels are measured:
- pipeline: full sampling calls (4 prompts, CFG 2, `--steps` steps), checking that the images are identical;
- forward: the transformer alone at the pipeline's batch (8), which gives the overhead with less noise.
Baseline and fused runs alternate inside one run, and each pair swaps the order of the last (on the shared VM the
second run of a pair was measurably faster). So load from other processes, and order effects, hit both alike.
The paired ratio (fused / baseline within a pair, median and quartiles) is the figure to read.

    OMP_NUM_THREADS=1 python benchmarks/kernels/bench_e2e_cpu.py --seed 0 --json benchmarks/kernels/results-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from _bench import append_rows, source, versions  # noqa: I001  (a sibling module: run this file as a script)

PROMPTS = ["a photo of two red circles", "a photo of a blue square left of a green triangle",
           "a photo of three yellow triangles", "a photo of a green circle above a red square"]


def load(model: str):
    """The built-in trained pipeline from accel.assets, or a tiny random one (no assets needed)."""
    from accel.pipelines.shapes import ShapesPipeline, build_shapes_pipeline

    if model == "builtin":
        from accel.models import builtin_model_path

        pipe = ShapesPipeline.from_pretrained(builtin_model_path())
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1)


def paired(run: Callable[[], tuple[float, object]], transformer, repeats: int) -> tuple[dict, bool]:
    """Alternate baseline and fused runs; returns their times and whether every pair gave identical outputs."""
    from accel.evals.timing import round_orders
    from accel.kernels import apply_fused_kernels

    def fused():
        handle = apply_fused_kernels(transformer)
        try:
            return run()
        finally:
            handle.remove()

    run()  # warm-up (allocator, first-call paths)
    times, identical = {"baseline": [], "fused": []}, True
    methods = {"fused": fused, "baseline": run}  # fused first in even pairs, baseline first in odd ones
    names = list(methods)
    for _, _, order in round_orders(len(names), 1, repeats):
        results = {names[k]: methods[names[k]]() for k in order}
        for name, (seconds, _) in results.items():
            times[name].append(seconds)
        identical &= torch.equal(results["baseline"][1], results["fused"][1])
    return times, identical


def summary(times: dict) -> dict:
    from accel.evals.timing import quartiles

    q1, median, q3 = quartiles([f / b for f, b in zip(times["fused"], times["baseline"])])
    return {"fused_over_baseline_paired_median": median, "fused_over_baseline_paired_q1": q1,
            "fused_over_baseline_paired_q3": q3,
            "fused_over_baseline_of_medians": statistics.median(times["fused"]) / statistics.median(times["baseline"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file (a list)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    parser.add_argument("--model", choices=["builtin", "tiny"], default="builtin")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=10, help="pipeline-level pairs")
    parser.add_argument("--forward-repeats", type=int, default=100, help="forward-level pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = source(args.json, args.allow_dirty)

    from accel.kernels import status

    pipe = load(args.model)
    gens = lambda: [torch.Generator().manual_seed(args.seed + i) for i in range(len(PROMPTS))]  # noqa: E731

    def sample():
        start = time.perf_counter()
        images = pipe(PROMPTS, num_inference_steps=args.steps, generator=gens(), output_type="pt").images
        return time.perf_counter() - start, images

    # The transformer's inputs at the pipeline's batch: 4 prompts x CFG 2.
    gen = torch.Generator().manual_seed(args.seed)
    size, text = pipe.transformer.config.sample_size, pipe.transformer.config.text_dim
    inputs = (torch.randn(8, 3, size, size, generator=gen), torch.randn(8, 16, text, generator=gen),
              torch.rand(8, generator=gen), torch.ones(8, 16, dtype=torch.long))

    @torch.no_grad()
    def forward():
        start = time.perf_counter()
        out = pipe.transformer(*inputs).sample
        return time.perf_counter() - start, out

    levels = {"pipeline": paired(sample, pipe.transformer, args.repeats),
              "forward": paired(forward, pipe.transformer, args.forward_repeats)}
    common = {
        "model": args.model, "steps": args.steps, "images_per_call": len(PROMPTS), "guidance_scale": 2.0,
        "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "kernel_path": status()["path"], "device": f"cpu ({platform.processor() or platform.machine()})",
        "host": platform.node(), "load_average": os.getloadavg(), "versions": versions(), **state,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "seed": args.seed,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    rows = []
    for level, (times, identical) in levels.items():
        stats = summary(times)
        for name in ("baseline", "fused"):
            rows.append({"op": f"e2e_shapes_{level}", "provider": name, **common, "repeats": len(times[name]),
                         "nfe_per_call": 2 * args.steps * len(PROMPTS) if level == "pipeline" else 8,
                         "s_median": statistics.median(times[name]), "s_all": times[name],
                         "outputs_identical": identical, **stats})
        q1, med, q3 = (stats[f"fused_over_baseline_paired_{k}"] for k in ("q1", "median", "q3"))
        print(f"{level:8s} baseline {statistics.median(times['baseline']):.4f} s, fused "
              f"{statistics.median(times['fused']):.4f} s; fused / baseline paired median {med:.3f} "
              f"(quartiles {q1:.3f}-{q3:.3f}); outputs identical: {identical}")
    if args.json:
        append_rows(args.json, rows)


if __name__ == "__main__":
    main()
