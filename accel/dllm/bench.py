"""Speed / accuracy of the decoders on the built-in masked-diffusion LM (or any model + task pair).

Every decoder decodes the same seeded problem set (accel.dllm.task.problem_set) at one gen_length in one run;
accuracy is exact match of the whole answer, token_accuracy the fraction of correct tokens; tokens_per_s is the
answers' tokens over the decoders' wall time; speedup is relative to the first decoder (the LLaDA baseline).
"""

from __future__ import annotations

import platform
import warnings
from typing import Callable

import numpy as np
import torch

from accel.dllm.decode import DecoderConfig, get_decoder, generate
from accel.dllm.task import problem_set, score

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


@torch.no_grad()
def bench_dllm(model, tokenizer, prompts: int = 24, seed: int = 0, gen_length: int = 256,
               decoders: tuple[str, ...] = DEFAULT_DECODERS,
               progress: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per decoder: decoder, knob, knob_value, gen_length, tokens_per_s, speedup, accuracy,
    token_accuracy, nfe, positions (token-forwards per answer), seconds, prompts, seed, machine, torch."""
    problems = problem_set(prompts, seed)
    delimiter = tokenizer.index.get("\n")
    configs = [parse_decoder(d) for d in decoders]
    rows = []
    for label, config in zip(decoders, configs):
        exact, tokens, nfe, positions, seconds = [], [], [], [], 0.0
        for problem in problems:
            out = generate(model, tokenizer.prompt_ids(problem.prompt), config, gen_length, delimiter_id=delimiter)
            ok, frac = score(tokenizer.decode(out.tokens), problem, gen_length)
            exact.append(ok)
            tokens.append(frac)
            nfe.append(out.stats.nfe)
            positions.append(out.stats.positions)
            seconds += out.stats.seconds
            if progress is not None:
                progress({"decoder": label})
        knob = KNOBS[config.name]
        rows.append({
            "decoder": label, "method": config.name, "knob": knob, "knob_value": getattr(config, knob),
            "config": repr(config), "gen_length": gen_length, "tokens_per_s": gen_length * len(problems) / seconds,
            "accuracy": float(np.mean(exact)), "token_accuracy": float(np.mean(tokens)),
            "nfe": float(np.mean(nfe)), "positions": float(np.mean(positions)), "seconds": round(seconds, 3),
            "prompts": len(problems), "seed": seed,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        })
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
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
        label = r["method"] + ("" if r["method"] != "fast-dllm" else f" ({r['config'].split('cache=')[1][1:-2]})")
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
    ax.set_title(f"gen length {rows[0]['gen_length']}, {rows[0]['prompts']} prompts, seed {rows[0]['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
