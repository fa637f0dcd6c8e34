"""Markdown tables and plots from recorded result rows (`accel eval`, every `accel bench`, the benchmark scripts).

Two users: `accel report FILE... --out report.md` renders any set of results files, with the machine, versions,
git sha and command of every row; and the docs, whose quoted tables are generated blocks

    <!-- table: KIND FILE [FILE ...] [OPTION=VALUE ...] -->
    ...
    <!-- /table -->

that `python scripts/doc_tables.py README.md docs/*.md` regenerates (`update`), so a quoted number always traces to
a row and the code that made it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
VERSIONS = ("torch", "diffusers", "transformers", "triton", "python", "accel")


def load_rows(path: str | Path, root: str | Path = ".") -> list[dict]:
    """The rows of one results file (a JSON list of rows, or one row), path relative to root unless absolute."""
    full = Path(root) / path
    try:
        data = json.loads(full.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such results file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON results file ({e})") from None
    rows = data if isinstance(data, list) else [data]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} holds no result rows (a JSON object, or a list of objects, is expected)")
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def eval_table(runs: list[list[dict]]) -> list[str]:
    """One row per results file of `accel eval shapes` / `shapes-video`: seed, overall, per tag."""
    results = [rows[0] for rows in runs]
    tags = [t for t in TAGS if t in results[0]["per_tag"]] or list(results[0]["per_tag"])
    return _table(["seed", "overall", *tags], [[str(r["seed"]), f"**{r['overall']:.3f}**",
                                                 *(f"{r['per_tag'][t]:.3f}" for t in tags)] for r in results])


def geneval_table(runs: list[list[dict]]) -> list[str]:
    """One row per `accel eval geneval` summary.json: model, detector, images, seed, the pipeline call's options,
    GenEval's overall (the tags' mean) and each tag's accuracy (tags in order of first appearance)."""
    results = [rows[0] for rows in runs]
    tags = list(dict.fromkeys(t for r in results for t in r["per_tag"]))

    def cells(r: dict) -> list[str]:
        s = r.get("settings", {})  # absent from a --score-only summary, whose folder any tool may have made
        per_prompt = f" ({r['images_per_prompt']} per prompt)" if "images_per_prompt" in r else ""
        options = "score only" if r.get("score_only") else \
            ", ".join(f"{k}={v}" for k, v in s.get("call", {}).items()) or "-"
        return [Path(str(s["model"])).name if s.get("model") else "-", str(s.get("detector", r.get("detector"))),
                f"{r['images']}{per_prompt}", str(s.get("seed", "-")), options, f"**{r['overall']:.3f}**",
                *(f"{r['per_tag'][t]:.3f}" if t in r["per_tag"] else "-" for t in tags)]

    return _table(["model", "detector", "images", "seed", "options", "overall", *tags], [cells(r) for r in results])


SEARCH_VALUES = ("accuracy", "accuracy_strict", "oracle_accuracy", "hacking_gap")


def _search_rows(runs: list[list[dict]], strategies: str | None) -> list[dict]:
    """The rows of every file; with `strategies` ("|"-separated names) only those, in that order."""
    rows = [r for run in runs for r in run]
    if strategies is None:
        return rows
    keep = strategies.split("|")
    missing = [k for k in keep if k not in {r["strategy"] for r in rows}]
    if missing:
        raise ValueError(f"strategies not in the rows: {', '.join(missing)}")
    return sorted((r for r in rows if r["strategy"] in keep), key=lambda r: keep.index(r["strategy"]))


def search_table(runs: list[list[dict]], strategies: str | None = None, value: str = "accuracy") -> list[str]:
    """Checker accuracy of each strategy (rows) at each budget (columns) from `accel bench search`.

    strategies: "|"-separated strategy names to keep, in that order; default every strategy of the files.
    value: the cell, one of SEARCH_VALUES (the oracle pick and the hacking gap are the learned-reward rows')."""
    if value not in SEARCH_VALUES:
        raise ValueError(f"unknown search table value {value!r}; allowed: {', '.join(SEARCH_VALUES)}")
    rows = _search_rows(runs, strategies)
    budgets = sorted({r["budget"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    acc = {(r["strategy"], r["budget"]): r[value] for r in rows if value in r}
    cell = "{:+.3f}" if value == "hacking_gap" else "{:.3f}"
    return _table(["strategy", *(f"{b:g}x" for b in budgets)],
                  [[s, *(cell.format(acc[s, b]) if (s, b) in acc else "-" for b in budgets)] for s in strategies])


def search_detail_table(runs: list[list[dict]], strategies: str | None = None) -> list[str]:
    """One line per (strategy, budget) of `accel bench search`: NFE spent, checker accuracy, the checker's own
    pick among the returned samples (oracle), the reward-hacking gap, and the reward / verifier / agent calls per
    prompt (verifier and agent calls are RAISE's). Rows of several prompt sets get a leading seed column."""
    rows = _search_rows(runs, strategies)
    seeds = len({r.get("seed") for r in rows}) > 1

    def calls(r: dict, key: str) -> str:
        return f"{r[key]:.1f}" if key in r else "-"

    return _table(["seed"] * seeds + ["strategy", "budget", "NFE / prompt", "reward", "accuracy", "oracle",
                                      "hacking gap", "reward calls", "verifier calls", "agent calls"],
                  [[str(r.get("seed"))] * seeds
                   + [r["strategy"], f"{r['budget']:g}x", f"{r['nfe']:.0f}", str(r.get("reward", "exact")),
                      f"**{r['accuracy']:.3f}**", f"{r['oracle_accuracy']:.3f}" if "oracle_accuracy" in r else "-",
                      f"{r['hacking_gap']:+.3f}" if "hacking_gap" in r else "-", calls(r, "reward_calls"),
                      calls(r, "verifier_calls"), calls(r, "agent_calls")] for r in rows])


def steps_table(runs: list[list[dict]], methods: str | None = None) -> list[str]:
    """One row per method of `accel bench steps`: measured runtime, checker accuracy, PSNR / SSIM to full steps.
    With several files (runs on other prompt sets), a first column gives each row's seed.

    methods: "|"-separated method names (a name may hold commas) to keep, in that order, from each file; default
    every row.
    """
    rows = []
    for run in runs:
        if methods is not None:
            by_name = {r["method"]: r for r in run}
            missing = [m for m in methods.split("|") if m not in by_name]
            if missing:
                raise ValueError(f"methods not in {run[0].get('_file', 'the rows')}: {', '.join(missing)}")
            run = [by_name[m] for m in methods.split("|")]
        rows += run
    seed = len(runs) > 1
    return _table(["seed"] * seed + ["method", "runtime (measured)", "accuracy", "PSNR dB", "SSIM"],
                  [([str(r["seed"])] if seed else []) + [r["method"], f"{r['runtime']:.2f}", f"{r['accuracy']:.3f}",
                    "-" if r["method"] == "full" else f"{r['psnr']:.1f}", f"{r['ssim']:.3f}"] for r in rows])


def paired_difference(correct: list, reference: list) -> tuple[float, float]:
    """Mean of correct - reference over the same prompts (0/1 each) and the half-width of its normal 95% interval:
    a method against the teacher on the same prompts and start noise, where the per-prompt differences are what
    varies."""
    d = [float(a) - float(b) for a, b in zip(correct, reference)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, 1.96 * (var / n) ** 0.5


def _with_paired(head: list[str], cells: list[list[str]], paired: list, reference: str) -> tuple[list, list]:
    """Add the column of paired differences to `reference` (paired_difference's (mean, half-width) or None per row)
    where any row has one; tables of older rows stay as they were."""
    if any(p is not None for p in paired):
        head = head + [f"vs {reference} (paired, 95% interval)"]
        cells = [row + ["-" if p is None else f"{p[0]:+.3f} ({p[0] - p[1]:+.3f} to {p[0] + p[1]:+.3f})"]
                 for row, p in zip(cells, paired)]
    return head, cells


def _fewstep_method(row: dict) -> tuple:
    """What a fewstep row measured, to pool it across prompt sets: the teacher or Euler steps by label, a student by
    its weights' fingerprint (`student_fingerprint`; rows from before it was recorded: by its folder, `student`, or
    the folder the command's --students gave it) and NFE. Rows with and without a fingerprint never pool."""
    if row.get("method") in ("teacher", "euler"):
        return (row["label"],)
    name, _, nfe = row["label"].rpartition(":nfe=")
    if row.get("student_fingerprint"):
        return ("weights", row["student_fingerprint"], nfe)
    folder = row.get("student")
    if folder is None:
        given = re.search(r"--students[ =](\S+)", row.get("command", ""))
        folder = next((f for f in (given.group(1).split(",") if given else ()) if f.rstrip("/").endswith(name)), name)
    return (folder.rstrip("/"), nfe)


def fewstep_table(runs: list[list[dict]]) -> list[str]:
    """One row per method of `accel bench fewstep`: NFE per sample, accuracy, PSNR / SSIM to the teacher, runtime,
    and the students' semigroup defect; for rows with per-prompt results, the accuracy difference to the teacher of
    the same run, paired over prompts, with its 95% interval (prompts in equal numbers per tag, as the benchmark
    draws them, make it the difference in the tag-averaged accuracy). Several runs (prompt sets) get a seed column
    and, for each method with per-prompt results on more than one set, a row pooled over their prompts (seed
    column: the sets pooled)."""
    rows, paired, pooled = [], [], {}
    for run in runs:
        teacher = next((r for r in run if r.get("method") == "teacher" and "correct" in r), None)
        for r in run:
            rows.append(r)
            ok = teacher is not None and r is not teacher and len(r.get("correct", ())) == len(teacher["correct"])
            paired.append(paired_difference(r["correct"], teacher["correct"]) if ok else None)
            key = _fewstep_method(r)
            if (ok or r is teacher) and all(q.get("seed") != r.get("seed") for q, _ in pooled.get(key, ())):
                pooled.setdefault(key, []).append((r, teacher))  # a set measured twice counts once
    seeds = len(runs) > 1
    defect = [r.get("semigroup_defect") for r in rows]
    # video runs with an AR student: its seam measure and the checker's persistence clause, where recorded
    extra = [(name, key, form) for name, key, form in (("seam ratio", "seam_ratio", "{:.2f}"),
                                                       ("persistence", "persistence", "{:.3f}"))
             if any(key in r for r in rows)]
    head = ["seed"] * seeds + ["method", "NFE", "accuracy", "PSNR dB", "SSIM", "runtime (measured)", "semigroup defect"]
    head += [name for name, _, _ in extra]
    cells = [[str(r.get("seed", "-"))] * seeds + [r["label"], f"{r['nfe']:.0f}", f"{r['accuracy']:.3f}",
                                                  f"{r['psnr']:.1f}", f"{r['ssim']:.3f}", f"{r['runtime']:.3f}",
                                                  "-" if d is None else f"{d:.4f}"]
             + ["-" if r.get(key) is None else form.format(r[key]) for _, key, form in extra]
             for r, d in zip(rows, defect)]
    for pairs in pooled.values() if seeds else ():
        if len(pairs) < 2:
            continue
        label = pairs[0][0]["label"]
        correct = [c for r, _ in pairs for c in r["correct"]]
        reference = [c for _, t in pairs for c in t["correct"]]
        sets = "+".join(str(r.get("seed")) for r, _ in pairs)
        cells.append([sets, f"**{label}**", f"{pairs[0][0]['nfe']:.0f}", f"{sum(correct) / len(correct):.3f}",
                      "-", "-", "-", "-"] + ["-"] * len(extra))
        paired.append(None if pairs[0][0] is pairs[0][1] else paired_difference(correct, reference))
    return _table(*_with_paired(head, cells, paired, "teacher"))


def dllm_table(runs: list[list[dict]]) -> list[str]:
    """One row per decoder of `accel bench dllm`: tokens/s, speedup over the first (baseline), exact match, cost.

    Rows of the interleaved benchmark (with `speedup_spread`) also give the speed-up's spread across repeats and
    exact match's 95% interval, and the task when the files hold more than one; rows recorded before (one timed
    pass, decoders in sequence) render as they were recorded, and without spread or interval in a mixed table."""
    rows = [r for run in runs for r in run]
    if not any("speedup_spread" in r for r in rows):
        return _table(["decoder", "tokens/s", "speedup", "exact match", "NFE", "token-forwards"],
                      [[r["decoder"], f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.1f}x", f"{r['accuracy']:.3f}",
                        f"{r['nfe']:.0f}", f"{r['positions']:,.0f}"] for r in rows])
    tasks = len({r.get("task", "counting") for r in rows}) > 1  # rows from before tasks had names: counting

    def spread(r: dict) -> str:
        return "" if r.get("speedup_spread") is None else f" ({r['speedup_spread']:.0%})"

    def interval(r: dict) -> str:
        return f" [{r['accuracy_ci95_low']:.2f}, {r['accuracy_ci95_high']:.2f}]" if "accuracy_ci95_low" in r else ""

    return _table(["task"] * tasks + ["decoder", "tokens/s (median)", "speedup (spread)", "exact match [95% CI]",
                                      "NFE", "token-forwards"],
                  [[r.get("task", "counting")] * tasks + [
                      r["decoder"], f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.1f}x{spread(r)}",
                      f"{r['accuracy']:.3f}{interval(r)}", f"{r['nfe']:.0f}", f"{r['positions']:,.0f}"] for r in rows])


def forward_table(runs: list[list[dict]]) -> list[str]:
    """One row per file of bench_dit_hsa_forward.py: the full forward's wall time and the speedup at each fraction
    (Nucleus rows name what ran the MoE layers)."""
    fractions = sorted({r["active_fraction"] for rows in runs for r in rows if r["active_fraction"] < 1}, reverse=True)
    table = []
    for rows in runs:
        full = next(r for r in rows if r["active_fraction"] == 1)
        speedup = {r["active_fraction"]: r["speedup"] for r in rows}
        moe = f", MoE: {full['moe']}" if full.get("moe") else ""  # Nucleus: diffusers' expert loop or accel's engine
        table.append([f"{full['model']} {full['size']}, {full['params'] / 1e6:.0f}M params, {full['dtype']}{moe}",
                      f"`kv={full['kv']}`", f"{full['tokens']} + {full['text_tokens']}",
                      f"{full['seconds'] * 1e3:.0f} ms",
                      *(f"{speedup[a]:.2f}x" if a in speedup else "-" for a in fractions)])
    return _table(["transformer", "K/V", "tokens (image + text)", "every token",
                   *(f"{a:.0%} active" for a in fractions)], table)


def memory_table(runs: list[list[dict]]) -> list[str]:
    """HSA's cache size per forward for real model sizes (bench_dit_hsa_forward.py --memory-only)."""
    modes = ("extrapolate", "extrapolate_fp8", "refresh", "refresh_fp8", "stale")
    rows = [r for run in runs for r in run]
    return _table(["per forward", "image tokens", "dtype", "`kv=extrapolate` (default)", "the same, fp8 block inputs",
                   "`kv=refresh`", "`kv=refresh`, fp8 inputs", "`kv=stale`"],
                  [[r["size"], f"{r['tokens']:,}", r["dtype"],
                    *(f"{r[f'cache_bytes_{m}'] / 2**30:.1f} GiB" for m in modes)] for r in rows])


def kernels_table(runs: list[list[dict]]) -> list[str]:
    """One row per (op, provider) of the kernel benchmarks: median seconds, and fused over baseline as the median of
    paired (interleaved) ratios with its quartiles."""
    rows = [r for run in runs for r in run]
    return _table(["op", "provider", "kernel path", "median s", "fused / baseline (paired median, q1-q3)",
                   "outputs identical"],
                  [[r["op"], r["provider"], r.get("kernel_path", "-"), f"{r['s_median']:.4f}",
                    f"{r['fused_over_baseline_paired_median']:.3f} ({r['fused_over_baseline_paired_q1']:.3f}-"
                    f"{r['fused_over_baseline_paired_q3']:.3f})" if "fused_over_baseline_paired_median" in r else "-",
                    str(r.get("outputs_identical", "-"))] for r in rows])


def moe_engine_table(runs: list[list[dict]]) -> list[str]:
    """One row per (level, provider) of benchmarks/moe/bench_engine_cpu.py: median time, the speed-up over diffusers'
    expert loop as the median of paired (interleaved) ratios with its quartiles (every provider at the row's torch
    thread count), and the largest output difference."""
    names = {"diffusers_loop": "diffusers loop", "diffusers_grouped_mm": "diffusers `F.grouped_mm`",
             "accel_engine": "accel engine"}
    rows = [r for run in runs for r in run]
    return _table(["threads", "level", "provider", "median ms", "speed-up vs the loop (paired median, quartiles)",
                   "max abs diff vs the loop"],
                  [[str(r.get("threads", "-")),
                    f"MoE layers ({r['moe_layers']})" if r["level"] == "moe_layers" else r["level"],
                    names.get(r["provider"], r["provider"]), f"{r['s_median'] * 1e3:.1f}",
                    f"{r['speedup_vs_loop_paired_median']:.2f} ({r['speedup_vs_loop_paired_q1']:.2f}-"
                    f"{r['speedup_vs_loop_paired_q3']:.2f})", f"{r['max_abs_diff_vs_loop']:.2g}"] for r in rows])


def moe_table(runs: list[list[dict]]) -> list[str]:
    """One row per (model, capacity option) of `accel bench moe`: checker accuracy, the expert FLOPs spent (fraction
    of the trained capacities'), the feed-forward compute per token, tokens no routed expert took, seconds; for rows
    with per-prompt results, the accuracy difference to the same model at its trained capacity (factor 1) in the
    same run, paired over prompts, with its 95% interval."""
    rows, paired = [], []
    for run in runs:
        full = {r["model"]: r for r in run if r.get("capacity") == 1.0 and "correct" in r}
        for r in run:
            rows.append(r)
            ref = full.get(r["model"])
            ok = ref is not None and r is not ref and len(r.get("correct", ())) == len(ref["correct"])
            paired.append(paired_difference(r["correct"], ref["correct"]) if ok else None)

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    head = ["model", "capacity", "method", "accuracy", "expert FLOPs", "FFN kMAC / token", "dropped tokens", "seconds"]
    cells = [[r["model"], "-" if r["capacity"] is None else str(r["capacity"]), r["method"], f"{r['accuracy']:.3f}",
              num(r["expert_flops_fraction"], ".2f"),
              num(r["ffn_macs_per_token"] / 1e3 if r.get("ffn_macs_per_token") is not None else None, ".0f"),
              num(r["dropped_token_fraction"], ".2f"), f"{r['seconds']:.1f}"] for r in rows]
    return _table(*_with_paired(head, cells, paired, "capacity 1"))


SIGMA_BANDS = ((0.75, 1.01), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))


def moe_router_table(runs: list[list[dict]], capacities: str = "1.0") -> list[str]:
    """The routing's coverage along the trajectory, per MoE row of `accel bench moe` at the given capacity factors
    ("|"-separated; default the trained capacity): the fraction of token visits no routed expert took, overall and
    averaged over the grid's steps in four sigma bands, and its range over the steps (the router-input ablation's
    measure of load balance across sigma: expert choice fills every expert, so imbalance shows up as uncovered
    tokens). Rows from several files (prompt sets) carry their seed."""
    keep = [float(c) for c in capacities.split("|")]
    rows = [r for run in runs for r in run if r.get("dropped_by_sigma") and r.get("capacity") in keep]
    if not rows:
        raise ValueError(f"no MoE rows with dropped_by_sigma at capacity {capacities}")
    seed = len(runs) > 1

    def band(r: dict, lo: float, hi: float) -> str:
        values = [v for s, v in r["dropped_by_sigma"].items() if lo <= float(s) < hi]
        return f"{sum(values) / len(values):.2f}" if values else "-"

    head = ["seed"] * seed + ["model", "capacity", "method", "accuracy", "dropped tokens",
                              *(f"sigma {lo:g}-{min(hi, 1):g}" for lo, hi in SIGMA_BANDS), "range over steps"]
    return _table(head, [[str(r.get("seed", "-"))] * seed + [
        r["model"], str(r["capacity"]), r["method"], f"{r['accuracy']:.3f}", f"{r['dropped_token_fraction']:.2f}",
        *(band(r, lo, hi) for lo, hi in SIGMA_BANDS),
        f"{min(r['dropped_by_sigma'].values()):.2f}-{max(r['dropped_by_sigma'].values()):.2f}"] for r in rows])


def moe_train_time_table(runs: list[list[dict]]) -> list[str]:
    """One row per model of benchmarks/moe/train_step_time.py: median seconds per training step over the interleaved
    rounds with their range, and the training steps that give the MoE run's CPU time."""
    cells = []
    for run in runs:
        for r in run:
            for name, s in r["s_per_step"].items():
                rounds = r["s_per_step_rounds"][name]
                steps = r["moe_steps"] if name == "moe" else r["dense_steps_same_time"]
                cells.append([name, str(r["threads"]), f"{s:.2f}", f"{min(rounds):.2f}-{max(rounds):.2f}",
                              f"{s / r['s_per_step']['moe']:.3f}", str(steps)])
    return _table(["model", "threads", "s / step (median)", "range over rounds", "relative to MoE",
                   "steps for the MoE run's CPU time"], cells)


def overhead_table(runs: list[list[dict]]) -> list[str]:
    """One row per family of `accel bench overhead`: the pipeline's ms per call, the wrapper's overhead in ms per call
    (the figure that carries over to real model sizes), the paired ratio with its spread, the outputs' difference."""
    rows = [r for run in runs for r in run]

    def spread(r: dict) -> str:
        return "" if r.get("ratio_spread") is None else f" ({r['ratio_spread']:.0%})"

    return _table(["family", "pipeline", "path", "steps", "pipeline ms/call", "overhead ms/call",
                   "accel / pipeline (paired median, spread)", "max abs diff"],
                  [[r["family"], r["pipeline_class"], r["path"], str(r["steps"]), f"{r['pipeline_ms']:.1f}",
                    f"{r['overhead_ms']:+.2f}", f"{r['ratio']:.3f}{spread(r)}", f"{r['max_abs_diff']:.1e}"]
                   for r in rows])


def vbench_table(runs: list[list[dict]]) -> list[str]:
    """One row per `accel eval vbench` results file: settings, computed dimensions, Quality / Semantic / Total."""
    from accel.evals.vbench import vbench_table as table

    return table(runs)


TABLES = {"eval": eval_table, "geneval": geneval_table, "search": search_table,
          "search-detail": search_detail_table, "steps": steps_table,
          "fewstep": fewstep_table, "dllm": dllm_table, "forward": forward_table, "memory": memory_table,
          "kernels": kernels_table, "moe-engine": moe_engine_table, "moe": moe_table,
          "moe-router": moe_router_table, "moe-train-time": moe_train_time_table,
          "overhead": overhead_table, "vbench": vbench_table}
# The keyword arguments each builder takes from a block's spec.
OPTIONS = {"steps": {"methods"}, "search": {"strategies", "value"}, "search-detail": {"strategies"},
           "moe-router": {"capacities"}}

# How a results file's kind is recognised: the first kind whose keys its first row has.
SIGNATURES = [("vbench", {"benchmark", "dimensions", "aggregate"}),
              ("geneval", {"overall", "per_tag", "correct_per_tag", "images"}), ("eval", {"overall", "per_tag"}),
              ("search", {"strategy", "budget", "accuracy"}),
              ("fewstep", {"label", "nfe", "accuracy", "runtime"}), ("steps", {"method", "runtime", "psnr"}),
              ("dllm", {"decoder", "tokens_per_s"}), ("forward", {"active_fraction", "speedup"}),
              ("memory", {"cache_bytes_stale", "size"}), ("moe-engine", {"speedup_vs_loop_paired_median", "level"}),
              ("moe", {"model", "capacity", "method", "expert_flops_fraction"}),
              ("moe-train-time", {"s_per_step", "moe_over_dense", "dense_steps_same_time"}),
              ("kernels", {"op", "provider", "s_median"}), ("overhead", {"family", "overhead_ms", "ratio"})]


def kind_of(rows: list[dict], path: str | Path = "rows") -> str:
    """The table kind of a results file, from the keys of its rows."""
    keys = set(rows[0])
    for kind, signature in SIGNATURES:
        if signature <= keys:
            return kind
    raise ValueError(f"{path}: not a results file accel knows (rows of: {', '.join(TABLES)})")


def provenance(files: list[str], runs: list[list[dict]]) -> str:
    """One line: the rows' files, and per distinct (sha, dirty, command) what made them."""
    made = []
    for rows in runs:
        for r in rows:
            dirty = r.get("dirty")
            state = "dirty: not recorded" if dirty is None else ("dirty" if dirty else "clean")
            sha = (r.get("git_sha") or "no sha")[:7]
            made.append(f"{sha} ({state}): `{r.get('command', '?')}`")
    made = list(dict.fromkeys(made))
    return "Rows: " + ", ".join(files) + "; recorded at " + "; ".join(made) + "."


def machines(runs: list[list[dict]]) -> list[str]:
    """One line per distinct machine and set of versions the rows were recorded on."""
    seen = []
    for rows in runs:
        for r in rows:
            versions = r.get("versions") if isinstance(r.get("versions"), dict) else r
            parts = [str(r[k]) for k in ("machine", "device") if r.get(k)]
            parts += [f"{k} {versions[k]}" for k in VERSIONS if versions.get(k)]
            seen.append(", ".join(parts) or "machine and versions not recorded")
    return list(dict.fromkeys(seen))


def render(spec: str, root: str | Path = ".") -> str:
    """The block for one spec "KIND FILE [FILE ...] [OPTION=VALUE ...]": the table, a blank line, the provenance."""
    kind, *words = spec.split()
    if kind not in TABLES:
        raise ValueError(f"unknown table kind {kind!r}; allowed: {', '.join(TABLES)}")
    options = dict(w.split("=", 1) for w in words if re.match(r"\w+=", w))
    files = [w for w in words if not re.match(r"\w+=", w)]
    if not files:
        raise ValueError(f"table {kind!r} needs at least one results file")
    unknown = set(options) - OPTIONS.get(kind, set())
    if unknown:
        raise ValueError(f"table {kind!r} takes no option {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(sorted(OPTIONS.get(kind, ()))) or 'none'}")
    runs = [[r | {"_file": f} for r in load_rows(f, root)] for f in files]
    return "\n".join(TABLES[kind](runs, **options)) + "\n\n" + provenance(files, runs) + "\n"


def update(text: str, root: str | Path = ".") -> tuple[str, list[str]]:
    """The text with every table block regenerated, and the specs of the blocks that changed."""
    stale = []

    def fill(m: re.Match) -> str:
        body = render(m["spec"], root)
        if body != m["body"]:
            stale.append(m["spec"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text), stale


def _plot(kind: str, rows: list[dict], path: str) -> bool:
    """The plot the kind's own benchmark command draws, or False when it has none (or matplotlib is missing)."""
    if kind == "search":
        from accel.search import plot_search as plot
    elif kind == "steps":
        from accel.evals.steps import plot_steps as plot
    elif kind == "fewstep":
        from accel.evals.fewstep import plot_fewstep as plot
    elif kind == "dllm":
        from accel.dllm.bench import plot_dllm as plot
    else:
        return False
    return plot(rows, path)


def report(files: list[str], out: str | Path, plots: bool = True, overwrite: bool = False) -> list[Path]:
    """Write a markdown report of the results files to `out`: per kind of rows (in the order first given) a table
    over its files, the plot its benchmark draws (a PNG next to `out`) and the machines, versions, git shas and
    commands that made the rows. Returns the paths written. Nothing is overwritten unless asked."""
    from accel.evals.io import check_writable, write_atomic

    if not files:
        raise ValueError("report needs at least one results file")
    out = Path(out)
    groups: dict[str, list[tuple[str, list[dict]]]] = {}
    for f in files:
        rows = load_rows(f)
        groups.setdefault(kind_of(rows, f), []).append((str(f), rows))
    pngs = {kind: out.with_name(f"{out.stem}-{kind}.png") for kind in groups} if plots else {}
    for path in [out, *pngs.values()]:
        check_writable(path)
        if path.exists() and not overwrite:
            raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    lines, written = ["# accel report", ""], []
    for kind, items in groups.items():
        names, runs = [n for n, _ in items], [rows for _, rows in items]
        lines += [f"## {kind}", "", *TABLES[kind](runs), ""]
        steps_seeds = kind == "steps" and len(runs) > 1  # a steps plot compares methods within one prompt set
        if kind in pngs and not steps_seeds and _plot(kind, [r for rows in runs for r in rows], str(pngs[kind])):
            lines += [f"![{kind}]({pngs[kind].name})", ""]
            written.append(pngs[kind])
        lines += [provenance(names, runs), "", "Machines and versions:", *(f"- {m}" for m in machines(runs)), ""]
    write_atomic(out, "\n".join(lines).encode())
    return [out, *written]
