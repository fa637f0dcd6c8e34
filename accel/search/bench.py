"""Benchmark of the search strategies on the built-in shapes model: checker accuracy against NFE budget.

Budgets are multiples of one plain sample's NFE (grid steps x CFG passes). Every (prompt, strategy, budget) run gets
the generator seed of evals.shapes for that prompt, so best-of-N at budget 1 *is* the plain sample of
`accel eval shapes` with the same seed, and all strategies start from the same first noise.
Accuracy follows GenEval: per-tag accuracy, averaged over the tags present; "strict" also forbids extra objects.

The search reward need not be the judge: with `reward` a learned one (the shapes verifier, CLIP), accuracy is still
scored by the exact checker, and each row records the reward-hacking gap: the accuracy of the checker-chosen best
among the samples a run returned (an oracle pick) minus that of the reward-chosen best. RAISE ("raise" among the
strategies) runs through accel.search.raise_.refine with the offline shapes agent; its verifier is the learned one
when the reward is, else the exact checker.
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
from accel.search.registry import SearchConfig, for_student, get_config, search
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
            guidance_scale: float | None, reward: Reward, chunk_size: int, verifier=None) -> dict:
    """One prompt, one strategy, one budget: the chosen image checked (lenient and strict), whether the checker
    would have found a correct one among the returned samples (`oracle`), NFE, calls, seconds."""
    from dataclasses import replace

    from accel.search.raise_ import RAISEConfig

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
    if isinstance(config, RAISEConfig):
        if student is not None:
            raise ValueError("RAISE in the benchmark runs on a teacher model, not a distilled student")
        images, best_reward, trace = _run_raise(denoiser, call, meta, reward, config, nfe,
                                                _generator(seed, index), chunk_size, verifier)
    else:
        result = search(denoiser, prepared, meta["prompt"], reward, config, nfe, _generator(seed, index), chunk_size)
        images = torch.cat([denoiser.decode(result.samples[k:k + chunk_size], _pt(prepared))[0]
                            for k in range(0, result.samples.shape[0], chunk_size)])
        best_reward, trace = float(result.rewards[0]), result.trace
    seconds = time.perf_counter() - start
    arrays = to_uint8(images).numpy()  # every returned sample, the reward's choice first
    correct = [check(a, meta).correct for a in arrays]
    return {"tag": meta["tag"], "correct": correct[0], "strict": check(arrays[0], meta, strict=True).correct,
            "oracle": any(correct), "reward": best_reward, "nfe": trace.nfe, "budget_nfe": nfe, "plain_nfe": plain,
            "reward_calls": trace.reward_calls, "verifier_calls": trace.extra.get("verifier_calls", 0),
            "agent_calls": trace.extra.get("agent_calls", 0), "rounds": trace.extra.get("rounds", 0),
            "seconds": seconds, "prompt": meta["prompt"],
            **{k: trace.extra[k] for k in ("stop", "best_round", "best_kind") if k in trace.extra}}


def _run_raise(denoiser, call: dict, meta: dict, reward: Reward, config, nfe: int, generator, chunk_size: int,
               verifier):
    """RAISE on one prompt with the offline shapes agent: (every candidate's pixels best first, best fitness,
    trace)."""
    from accel.search.raise_ import refine
    from accel.search.raise_agents import ShapesAgent

    agent = ShapesAgent(verifier=verifier, metadata={meta["prompt"]: meta})
    result = refine(denoiser, call, reward, config, nfe, agent, generator=generator, chunk_size=chunk_size)
    return result.images, float(result.fitness[0]), result.trace


def _pt(prepared):
    from dataclasses import replace

    return replace(prepared, options=dict(prepared.options, output_type="pt", return_dict=False))


def bench_search(pipe, prompts: int | list[dict] = 24, seed: int = 0,
                 strategies: tuple[str | SearchConfig, ...] = ("bon", "sop", "smc", "epf", "svdd", "rbf", "beam"),
                 budgets: tuple[float, ...] = (1, 2, 4, 8, 16), steps: int | None = None,
                 guidance_scale: float | None = None, reward: Reward | None = None, chunk_size: int = 16,
                 progress: Callable[[dict], None] | None = None, reward_name: str | None = None,
                 verifier=None) -> list[dict]:
    """Accuracy of each strategy at each budget on a seeded shapes prompt set.

    Args:
        pipe: a ShapesPipeline (plain; the adapter is found by family), or a distilled student of one (a folder
            with student.json: the strategies then run on its grid without CFG, so a budget of 1 is one student
            sample, e.g. 4 NFE; compare rows at equal `nfe` with the teacher's).
        prompts: a number of prompts (accel.shapes.prompt_set(n, seed): the six tags in turn) or metadata dicts.
        strategies: shortcuts (with options, e.g. "smc:interpolant=linear"; the row's label) or configs; "raise"
            (with options, e.g. "raise:population=4") runs RAISE with the offline shapes agent.
        budgets: multiples of one plain sample's NFE (>= 1).
        steps, guidance_scale: the pipeline's call options (None: its defaults).
        reward: the search reward (default: ShapesReward(strict=True), the exact checker score); accuracy is
            always the checker's.
        progress: called with each finished (prompt, strategy, budget) record.
        reward_name: the rows' `reward` label (default: "exact" for the default reward, else the class name).
        verifier: RAISE's yes/no verifier (default: the exact checker, accel.rewards.verifier.ExactVerifier).
    Returns:
        One row per (strategy, budget): strategy, budget, nfe (mean per prompt), budget_nfe, accuracy,
        accuracy_strict, per_tag, mean_reward, reward, oracle_accuracy (the checker's pick among the returned
        samples), hacking_gap (oracle_accuracy - accuracy), reward_calls / verifier_calls / agent_calls (means per
        prompt; verifier and agent calls are RAISE's), seconds (total), prompts, seed, steps, machine, torch, and
        per_prompt (each prompt's tag, correct / strict / oracle, NFE; for RAISE its rounds, stop reason and the
        round and kind of the returned candidate).
    """
    from accel.schedulers.fewstep import find_student

    metas = prompt_set(prompts, seed) if isinstance(prompts, int) else list(prompts)
    student = find_student(pipe)
    # On a student, a plain ODE shortcut ("bon") draws the student's own samples (accel.search.registry.for_student).
    configs = [get_config(s if student is None else for_student(s, student.rule)) for s in strategies]
    labels = [s if isinstance(s, str) else c.name for s, c in zip(strategies, configs)]
    if not budgets or min(budgets) < 1:
        raise ValueError(f"budgets are multiples of one sample's NFE and must be >= 1, got {budgets}")
    from accel.search.raise_ import RAISEConfig

    for label, config in zip(labels, configs):
        if isinstance(config, RAISEConfig) and min(budgets) < config.population:
            raise ValueError(f"{label} needs a budget of at least one round, {config.population} samples; got "
                             f"{min(budgets):g}: give budgets >= {config.population}, or a population of at most "
                             f"the smallest budget")
    if reward_name is None:
        reward_name = "exact" if reward is None else type(reward).__name__
    reward = reward or ShapesReward(strict=True)
    if verifier is None:
        from accel.rewards.verifier import ExactVerifier

        verifier = ExactVerifier()
    rows = []
    for label, config in zip(labels, configs):
        for budget in budgets:
            records = []
            for j, meta in enumerate(metas):
                rec = run_one(pipe, meta, j, seed, config, budget, steps, guidance_scale, reward, chunk_size,
                              verifier)
                records.append(rec)
                if progress is not None:
                    progress(rec | {"strategy": label, "budget": budget})
            rows.append(_row(label, config, budget, records, seed, steps) | {"reward": reward_name})
    return rows


BENCH_REWARDS = ("exact", "exact-lenient", "shapes-verifier", "shapes-verifier:prompt", "shapes-detector",
                 "shapes-detector:prompt", "clip:<folder or hub id>")


def bench_reward(name: str, verifier_path: str | None = None):
    """(reward, RAISE's verifier) for a benchmark reward name (see BENCH_REWARDS): the exact checker's score
    (strict or lenient), the learned shapes verifier or the learned detector with GenEval's rules (product over
    requirements, or asked of the whole prompt; `verifier_path`: its folder), or a CLIP score. RAISE's verifier is
    the learned one when the reward is, else the exact checker."""
    from accel.rewards.verifier import ExactVerifier, ShapesVerifier, VerifierReward

    if name in ("exact", "exact-lenient"):
        return ShapesReward(strict=name == "exact"), ExactVerifier()
    if name in ("shapes-verifier", "shapes-verifier:prompt"):
        model = ShapesVerifier.from_pretrained(verifier_path)
        return VerifierReward(model, "prompt" if name.endswith(":prompt") else "product"), model
    if name in ("shapes-detector", "shapes-detector:prompt"):
        from accel.rewards.detector import DetectorVerifier

        model = DetectorVerifier.from_pretrained(verifier_path)
        return VerifierReward(model, "prompt" if name.endswith(":prompt") else "product"), model
    if name.startswith("clip:") and len(name) > 5:
        from accel.rewards.clip import CLIPReward

        return CLIPReward.from_pretrained(name[5:]), ExactVerifier()
    raise ValueError(f"unknown benchmark reward {name!r}; allowed: {', '.join(BENCH_REWARDS)}")


# What a row keeps of each prompt's run, so that a result can be traced to the prompts behind it (RAISE adds why it
# stopped and which round and kind of candidate it returned).
_PER_PROMPT = ("prompt", "tag", "correct", "strict", "oracle", "nfe", "rounds", "stop", "best_round", "best_kind")


def _row(label: str, config: SearchConfig, budget: float, records: list[dict], seed: int, steps: int | None) -> dict:
    accuracy, per_tag = _geneval([(r["tag"], r["correct"]) for r in records])
    strict, per_tag_strict = _geneval([(r["tag"], r["strict"]) for r in records])
    oracle, _ = _geneval([(r["tag"], r["oracle"]) for r in records])
    return {
        "strategy": label, "config": repr(config), "budget": budget,
        "nfe": float(np.mean([r["nfe"] for r in records])), "budget_nfe": records[0]["budget_nfe"],
        "plain_nfe": records[0]["plain_nfe"], "accuracy": accuracy, "accuracy_strict": strict,
        "per_tag": per_tag, "per_tag_strict": per_tag_strict,
        "accuracy_images": float(np.mean([r["correct"] for r in records])),
        "mean_reward": float(np.mean([r["reward"] for r in records])),
        "oracle_accuracy": oracle, "hacking_gap": oracle - accuracy,
        **{k: float(np.mean([r[k] for r in records])) for k in ("reward_calls", "verifier_calls", "agent_calls",
                                                                "rounds")},
        "seconds": round(sum(r["seconds"] for r in records), 3), "prompts": len(records), "seed": seed,
        "per_prompt": [{k: r[k] for k in _PER_PROMPT if k in r} for r in records],
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
