"""Seconds per training step of the built-in MoE shapes model and of its dense baseline of equal active compute,
measured interleaved in one process, so that the dense run can be given the MoE run's CPU time through --steps.

Each round runs --block steps of every model in turn (rotating which goes first), from the script's initial
weights, at an evenly spaced point of the run's schedule; a model's time is the median over rounds of its per-step
time. The row carries the step-count ratio that equalises training time (MoE seconds per step / dense seconds per
step) and the dense --steps it implies for a MoE run of --moe-steps.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/moe/train_step_time.py --seed 0 --rounds 5 --json step-time.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import train_shapes_moe as train  # noqa: E402

from accel.evals.io import check_writable, require_clean, run_info, write_json  # noqa: E402
from accel.moe import ExpertChoiceConfig, apply_expert_choice  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=10, help="steps per model per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--moe-steps", type=int, default=4000, help="the MoE run's length, to scale the dense one's")
    ap.add_argument("--prompts", type=int, default=0, help="unused (training draws its own scenes); kept for the "
                    "benchmarks' common interface")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--allow-dirty", action="store_true",
                    help="record --json rows from a checkout with uncommitted changes (marked dirty)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.block < 1:
        ap.error("--rounds and --block must be >= 1")
    if args.json:
        check_writable(args.json)
    state = require_clean(args.allow_dirty)
    torch.set_num_threads(args.threads)
    common = ["--seed", str(args.seed), "--threads", str(args.threads)]
    runs = {"moe": train.Run(train.parser().parse_args(common)),
            "dense": train.Run(train.parser().parse_args(common + ["--dense"]))}
    config = ExpertChoiceConfig(coactivation=runs["moe"].args.coactivation)
    engines = {"moe": apply_expert_choice(runs["moe"].tr, config), "dense": None}
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            # Round r starts at an evenly spaced point of the run, so the MoE's capacity schedule (twice the trained
            # capacity at first, sparsified to 1 over the first 30%) is sampled as a whole run spends it.
            runs[name].step = (2 * r + 1) * args.moe_steps // (2 * args.rounds)
            start = time.perf_counter()
            for _ in range(args.block):
                train.train_step(runs[name], engines[name])
            times[name].append((time.perf_counter() - start) / args.block)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s/step" for n in names),
              flush=True)
    engines["moe"].remove()
    med = {n: statistics.median(t) for n, t in times.items()}
    ratio = med["moe"] / med["dense"]
    row = {"bench": "moe_train_step_time", "seed": args.seed, "rounds": args.rounds, "block": args.block,
           "threads": args.threads, "batch_size": runs["moe"].args.batch_size,
           "s_per_step": {n: med[n] for n in names}, "s_per_step_rounds": times,
           "moe_over_dense": ratio, "moe_steps": args.moe_steps, "dense_steps_same_time": round(args.moe_steps * ratio),
           **run_info(state)}
    row["command"] = " ".join([Path(sys.executable).name, "benchmarks/moe/train_step_time.py",
                               *(argv if argv is not None else sys.argv[1:])])
    print(f"MoE {med['moe']:.2f} s/step, dense {med['dense']:.2f} s/step: dense --steps "
          f"{row['dense_steps_same_time']} for the MoE run's {args.moe_steps}", flush=True)
    if args.json is not None:
        write_json(args.json, [row])
    return [row]


if __name__ == "__main__":
    main()
