"""Speed / accuracy of the decoders on a built-in task (accel.dllm.task), with any model that speaks its prompts.

Method (so that a change of machine load falls on every decoder alike, and every number comes with its spread):
- Every decoder decodes the same seeded problem set (the task's held-out problems) at one gen_length.
- Interleaved (accel.evals.timing.round_orders): the decoders take turns per prompt, round-robin, in a fixed order
  rotated by one decoder each round (a round: one prompt in one repeat); `repeats` passes over the prompts time
  every decoder that many times. One untimed warm-up round comes first.
- tokens_per_s: the median over repeats of that repeat's answer tokens over its decoding seconds (min and max
  beside it). speedup: the median over repeats of the paired ratio, the decoder's tokens/s over the first decoder's
  (the baseline's) in the same repeat; speedup_spread: (max - min) / median of those ratios (None with one repeat).
- accuracy: exact match of the whole answer, with its Wilson 95% interval over the prompts; token_accuracy: the
  fraction of correct tokens. Decoding is greedy, so every repeat must give the same tokens: the first repeat's are
  scored and repeat_mismatches counts the answers a later repeat changed (0 expected).
- nfe: model forwards per answer; positions: token-forwards per answer (the compute the caches save).
"""

from __future__ import annotations

import math
import platform
import re
import statistics
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from accel.dllm.decode import DecoderConfig, Generation, get_decoder, generate
from accel.dllm.task import get_task, score
from accel.evals.timing import median_spread, round_orders

# The baseline first (speedups are relative to it), then each method over its main knob.
DEFAULT_DECODERS: tuple[str, ...] = (
    "llada",
    "fast-dllm:threshold=0.5", "fast-dllm:threshold=0.7", "fast-dllm:threshold=0.9", "fast-dllm:threshold=0.99",
    "fast-dllm:threshold=0.9:cache=prefix", "fast-dllm:threshold=0.9:cache=none",
    "window:window=32", "window:window=64",  # the paper's one token per step
    "window:window=16:threshold=0.9", "window:window=32:threshold=0.9", "window:window=64:threshold=0.9",
    "window:window=128:threshold=0.9", "window:window=64:threshold=0.7", "window:window=64:threshold=0.99",
    "adablock",
)
KNOBS = {"fast-dllm": "threshold", "window": "window", "llada": "block_length", "adablock": "threshold"}


def parse_decoder(spec: str) -> DecoderConfig:
    """A decoder from 'name[:key=value...]' (values parsed as int, float, or text)."""
    name, *items = spec.split(":")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"decoder option {item!r} must look like key=value (e.g. window:window=32)")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        options[key] = value
    return get_decoder(name, **options)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96): sane at 0 and n successes, where
    the normal approximation collapses to a point."""
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and n successes the bounds are exactly 0 and 1 (the formula gives them up to rounding).
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


@dataclass
class _Timing:
    """One decoder's outputs (first repeat, per prompt), decoding seconds per repeat, answers a repeat changed."""

    outputs: list[Generation | None]
    seconds: list[float]
    mismatches: int = 0


def _run_rounds(model, ids: list[list[int]], configs: list[DecoderConfig], gen_length: int, delimiter: int | None,
                repeats: int, progress: Callable[[dict], None] | None, labels: tuple[str, ...]) -> list[_Timing]:
    """Decode every prompt with every decoder, interleaved (round_orders), after one untimed warm-up round."""
    for config in configs:  # warm-up: first-call costs (allocator, kernels) land on no timed decode
        generate(model, ids[0], config, gen_length, delimiter_id=delimiter)
    timings = [_Timing([None] * len(ids), [0.0] * repeats) for _ in configs]
    for r, i, order in round_orders(len(configs), len(ids), repeats):
        for d in order:
            out = generate(model, ids[i], configs[d], gen_length, delimiter_id=delimiter)
            t = timings[d]
            t.seconds[r] += out.stats.seconds
            if r == 0:
                t.outputs[i] = out
            elif not torch.equal(out.tokens, t.outputs[i].tokens):
                t.mismatches += 1
            if progress is not None:
                progress({"decoder": labels[d], "repeat": r, "prompt": i})
    return timings


@torch.no_grad()
def bench_dllm(model, tokenizer, prompts: int = 24, seed: int = 0, gen_length: int = 256,
               decoders: tuple[str, ...] = DEFAULT_DECODERS, task: str = "counting", repeats: int = 3,
               progress: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per decoder (see the module docstring for the method): decoder, method, knob, knob_value, config,
    task, gen_length, tokens_per_s (median) and its min / max, speedup (paired median) with speedup_min / max and
    speedup_spread, accuracy with accuracy_ci95_low / high, token_accuracy, nfe and positions (token-forwards) per
    answer, seconds (median per repeat), repeats, repeat_mismatches, prompts, seed, order, machine, torch.

    Raises ValueError for an unknown task or decoder, prompts or repeats < 1, or a tokenizer that cannot encode
    the task's prompts."""
    the_task = get_task(task)
    if prompts < 1 or repeats < 1:
        raise ValueError(f"prompts and repeats must be >= 1, got {prompts} and {repeats}")
    problems = the_task.problem_set(prompts, seed)
    try:
        ids = [tokenizer.prompt_ids(p.prompt) for p in problems]
    except ValueError as e:
        raise ValueError(f"the model's tokenizer cannot encode the {task} task's prompts ({e}); use a model "
                         f"trained on it (the built-in one: --model {task})") from None
    configs = [parse_decoder(d) for d in decoders]
    timings = _run_rounds(model, ids, configs, gen_length, tokenizer.index.get("\n"), repeats, progress, decoders)
    base = timings[0].seconds
    rows = []
    for label, config, t in zip(decoders, configs, timings):
        scores = [score(tokenizer.decode(out.tokens), p, gen_length) for out, p in zip(t.outputs, problems)]
        exact = sum(ok for ok, _ in scores)
        tps = median_spread([gen_length * len(problems) / s for s in t.seconds])
        # The same tokens: the time ratio is the tokens/s ratio.
        speedup = median_spread([b / s for b, s in zip(base, t.seconds)])
        low, high = wilson_interval(exact, len(problems))
        knob = KNOBS[config.name]
        rows.append({
            "decoder": label, "method": config.name, "knob": knob, "knob_value": getattr(config, knob),
            "config": repr(config), "task": task, "gen_length": gen_length,
            "tokens_per_s": tps.median, "tokens_per_s_min": tps.min, "tokens_per_s_max": tps.max,
            "speedup": speedup.median, "speedup_min": speedup.min, "speedup_max": speedup.max,
            "speedup_spread": speedup.spread,
            "accuracy": exact / len(problems), "accuracy_ci95_low": low, "accuracy_ci95_high": high,
            "token_accuracy": float(np.mean([frac for _, frac in scores])),
            "nfe": float(np.mean([o.stats.nfe for o in t.outputs])),
            "positions": float(np.mean([o.stats.positions for o in t.outputs])),
            "seconds": round(statistics.median(t.seconds), 3), "repeats": repeats,
            "repeat_mismatches": t.mismatches, "prompts": len(problems), "seed": seed,
            "order": "interleaved per prompt, rotated each round",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        })
    return rows


def plot_dllm(rows: list[dict], path: str) -> bool:
    """Exact-match accuracy against speedup over the baseline, one curve per method over its knob (PNG).
    Returns False, with a warning, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("plot skipped: matplotlib is not installed (pip install matplotlib)", stacklevel=2)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        cache = re.search(r"cache='(\w+)'", r["config"]) if r["method"] == "fast-dllm" else None
        label = r["method"] + (f" ({cache.group(1).replace('none', 'no')} cache)" if cache else "")
        if r["method"] == "window" and "threshold=None" not in r["config"]:
            label += " + threshold"
        groups.setdefault(label, []).append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["speedup"])
        ax.plot([r["speedup"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=label)
        for r in rs:
            if r["method"] in ("fast-dllm", "window") and len(rs) > 1:
                ax.annotate(f"{r['knob_value']:g}", (r["speedup"], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens/s relative to the LLaDA baseline")
    ax.set_ylabel("exact-match accuracy")
    task = f"{rows[0]['task']}, " if "task" in rows[0] else ""  # rows recorded before tasks had names: counting
    ax.set_title(f"{task}gen length {rows[0]['gen_length']}, {rows[0]['prompts']} prompts, seed {rows[0]['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
