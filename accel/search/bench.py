"""Benchmark of the search strategies on the built-in shapes model: checker accuracy against NFE budget.

Budgets are multiples of one plain sample's NFE (grid steps x CFG passes). Every (prompt, strategy, budget) run gets
the generator seed of evals.shapes for that prompt, so best-of-N at budget 1 *is* the plain sample of
`accel eval shapes` with the same seed, and all strategies start from the same first noise.
Accuracy follows GenEval: per-tag accuracy, averaged over the tags present; "strict" also forbids extra objects.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from accel.core.reward import Reward
from accel.rewards.base import to_uint8
from accel.rewards.shapes import ShapesReward
from accel.search.registry import SearchConfig, get_config, search
from accel.shapes import TAGS, check, prompt_set


def _generator(seed: int, index: int) -> torch.Generator:
    # Same seeds as accel.evals.shapes.image_generators(seed, 0, n)[index].
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def _geneval(flags: list[tuple[str, bool]]) -> tuple[float, dict[str, float]]:
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for tag, ok in flags:
        by_tag[tag].append(ok)
    per_tag = {t: float(np.mean(by_tag[t])) for t in TAGS if by_tag[t]}
    return float(np.mean(list(per_tag.values()))), per_tag


@torch.no_grad()
def run_one(pipe, meta: dict, index: int, seed: int, config: SearchConfig, budget: float, steps: int | None,
            guidance_scale: float | None, reward: Reward, chunk_size: int) -> dict:
    """One prompt, one strategy, one budget: the chosen image checked (lenient and strict), NFE, seconds."""
    from dataclasses import replace

    from accel.pipelines.registry import adapter_for
    from accel.schedulers.fewstep import find_student

    denoiser = adapter_for(pipe)
    call = {"prompt": meta["prompt"], "output_type": "pt", "generator": torch.Generator().manual_seed(0)}
    if steps is not None:
        call["num_inference_steps"] = steps
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    student = find_student(pipe)
    if student is not None:  # search over a distilled student's samples: its grid, its call (no CFG)
        call = student.call_defaults | call
        call["num_inference_steps"] = steps or max(student.nfes)
    prepared = denoiser.prepare(**call)
    if student is not None:
        prepared = replace(prepared, grid=student.grid(call["num_inference_steps"]))
        if prepared.cond.passes != 1:
            raise ValueError("a distilled student searches without classifier-free guidance: leave guidance_scale "
                             "at the student's setting")
    plain = prepared.grid.num_steps * prepared.cond.passes
    nfe = int(round(budget * plain))
    start = time.perf_counter()
    result = search(denoiser, prepared, meta["prompt"], reward, config, nfe, _generator(seed, index), chunk_size)
    seconds = time.perf_counter() - start
    image = to_uint8(denoiser.decode(result.best, _pt(prepared))[0])[0].numpy()
    return {"tag": meta["tag"], "correct": check(image, meta).correct,
            "strict": check(image, meta, strict=True).correct, "reward": float(result.rewards[0]),
            "nfe": result.trace.nfe, "budget_nfe": nfe, "plain_nfe": plain, "seconds": seconds}


def _pt(prepared):
    from dataclasses import replace

    return replace(prepared, options=dict(prepared.options, output_type="pt", return_dict=False))


def bench_search(pipe, prompts: int | list[dict] = 24, seed: int = 0,
                 strategies: tuple[str | SearchConfig, ...] = ("bon", "sop", "smc", "epf", "svdd", "rbf", "beam"),
                 budgets: tuple[float, ...] = (1, 2, 4, 8, 16), steps: int | None = None,
                 guidance_scale: float | None = None, reward: Reward | None = None, chunk_size: int = 16,
                 progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Accuracy of each strategy at each budget on a seeded shapes prompt set.

    Args:
        pipe: a ShapesPipeline (plain; the adapter is found by family), or a distilled student of one (a folder
            with student.json: the strategies then run on its grid without CFG, so a budget of 1 is one student
            sample, e.g. 4 NFE; compare rows at equal `nfe` with the teacher's).
        prompts: a number of prompts (accel.shapes.prompt_set(n, seed): the six tags in turn) or metadata dicts.
        strategies: shortcuts (with options, e.g. "smc:interpolant=linear"; the row's label) or configs.
        budgets: multiples of one plain sample's NFE (>= 1).
        steps, guidance_scale: the pipeline's call options (None: its defaults).
        reward: the search reward (default: ShapesReward(strict=True), the exact checker score).
        progress: called with each finished (prompt, strategy, budget) record.
    Returns:
        One row per (strategy, budget): strategy, budget, nfe (mean per prompt), budget_nfe, accuracy,
        accuracy_strict, per_tag, mean_reward, seconds (total), prompts, seed, steps, machine, torch.
    """
    metas = prompt_set(prompts, seed) if isinstance(prompts, int) else list(prompts)
    configs = [get_config(s) for s in strategies]
    labels = [s if isinstance(s, str) else c.name for s, c in zip(strategies, configs)]
    if not budgets or min(budgets) < 1:
        raise ValueError(f"budgets are multiples of one sample's NFE and must be >= 1, got {budgets}")
    reward = reward or ShapesReward(strict=True)
    rows = []
    for label, config in zip(labels, configs):
        for budget in budgets:
            records = []
            for j, meta in enumerate(metas):
                rec = run_one(pipe, meta, j, seed, config, budget, steps, guidance_scale, reward, chunk_size)
                records.append(rec)
                if progress is not None:
                    progress(rec | {"strategy": label, "budget": budget})
            rows.append(_row(label, config, budget, records, seed, steps))
    return rows


def _row(label: str, config: SearchConfig, budget: float, records: list[dict], seed: int, steps: int | None) -> dict:
    accuracy, per_tag = _geneval([(r["tag"], r["correct"]) for r in records])
    strict, per_tag_strict = _geneval([(r["tag"], r["strict"]) for r in records])
    return {
        "strategy": label, "config": repr(config), "budget": budget,
        "nfe": float(np.mean([r["nfe"] for r in records])), "budget_nfe": records[0]["budget_nfe"],
        "plain_nfe": records[0]["plain_nfe"], "accuracy": accuracy, "accuracy_strict": strict,
        "per_tag": per_tag, "per_tag_strict": per_tag_strict,
        "accuracy_images": float(np.mean([r["correct"] for r in records])),
        "mean_reward": float(np.mean([r["reward"] for r in records])),
        "seconds": round(sum(r["seconds"] for r in records), 3), "prompts": len(records), "seed": seed,
        "steps": steps if steps is not None else "pipeline default",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
    }


def plot_search(rows: list[dict], path: str) -> bool:
    """Accuracy (lenient and strict) against budget, one curve per strategy, as a PNG.

    Returns False, with a warning saying so, when matplotlib is not installed (it is optional).
    """
    from accel.evals.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for key, ax in zip(("accuracy", "accuracy_strict"), axes):
        for name in dict.fromkeys(r["strategy"] for r in rows):
            pts = sorted((r["budget"], r[key]) for r in rows if r["strategy"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE budget (x one plain sample)")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("checker accuracy")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    save(fig, path)
    return True
