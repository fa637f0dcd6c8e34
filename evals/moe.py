"""`accel bench moe`: exact-checker accuracy, wall time and expert FLOPs of MoE shapes models against capacity.

For each model (the built-in MoE model, its ablations, a dense model), every capacity option runs the same seeded
prompt set through `accelerate_pipeline(pipe)(..., capacity=...)`: constant factors on the trained capacities and
per-step schedules ("auto", or `name=sigma:factor,sigma:factor` piecewise-constant, e.g. `late=0.5:1,0:0.5`, the
factor of the first threshold that sigma reaches). A dense model gets one row (method "dense", no capacity).

Rows: model, capacity (the factor, or the schedule's name), method ("constant" or the schedule's name), accuracy
(GenEval's per-tag mean, the exact checker), accuracy_images, seconds (the best of `repeats` timing rounds),
expert_flops_fraction and routed_flops_fraction (accel.moe.ExpertStats), dropped_token_fraction (tokens no
routed expert took: expert choice balances the experts by construction, so load balance shows up here instead)
and dropped_by_sigma (the same per sigma of the grid: the router-input ablation's measure), ffn_macs_per_token
(the active compute of the feed-forward layers per token, summed over blocks: what "no more active compute than the
dense model" compares), nfe, prompts, seed, steps. The CLI adds machine, versions, command and git sha (run_info).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from accel.shapes import check, prompt_set

DEFAULT_CAPACITIES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_SCHEDULES = ("auto",)


def parse_schedule(text: str) -> tuple[str, object]:
    """("auto", "auto") or (name, sigma -> factor) for `name=s1:f1,s2:f2,...` (thresholds in descending order;
    sigma >= s_i gives f_i, the first that applies; the last threshold should be 0)."""
    if text == "auto":
        return "auto", "auto"
    name, sep, body = text.partition("=")
    try:
        steps = [tuple(float(v) for v in part.split(":")) for part in body.split(",")] if sep else []
    except ValueError:
        steps = []
    if not name or not steps or any(len(s) != 2 or s[1] <= 0 for s in steps) or \
            [s[0] for s in steps] != sorted((s[0] for s in steps), reverse=True):
        raise ValueError(f"a schedule is 'auto' or name=sigma:factor,... with descending sigma thresholds and "
                         f"factors > 0 (e.g. late=0.5:1,0:0.5), got {text!r}")

    def schedule(sigma: float) -> float:
        return next((f for s, f in steps if sigma >= s), steps[-1][1])

    return name, schedule


def ffn_macs_per_token(transformer: torch.nn.Module, routed_per_token: float | None = None) -> float:
    """Multiply-accumulates per token of a shapes DiT's feed-forward layers, summed over its blocks: a dense block's
    MLP (its linear layers); an MoE block's router, shared expert and `routed_per_token` routed experts (SwiGLU:
    three matmuls each; every expert of a Nucleus layer has the shared expert's width)."""
    from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoELayer

    total = 0.0
    for block in transformer.blocks:
        mlp = block.mlp
        if isinstance(mlp, NucleusMoELayer):
            expert = 3 * mlp.hidden_size * mlp.moe_intermediate_dim
            total += mlp.gate.in_features * mlp.gate.out_features + expert * (1 + (routed_per_token or 0.0))
        else:
            total += sum(m.in_features * m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear))
    return total


def _accuracy(images: torch.Tensor, metas: list[dict]) -> tuple[float, float, dict[str, float], list[int]]:
    """GenEval's overall score (accuracy per tag, averaged over the tags), the plain per-image accuracy, the
    accuracy per tag, and each prompt's result in prompt order (for paired comparisons between options)."""
    u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    by_tag: dict[str, list[bool]] = defaultdict(list)
    correct = []
    for img, meta in zip(u8, metas):
        correct.append(int(check(img, meta).correct))
        by_tag[meta["tag"]].append(correct[-1])
    per_tag = {t: float(np.mean(v)) for t, v in by_tag.items()}
    return float(np.mean(list(per_tag.values()))), float(np.mean(correct)), per_tag, correct


@torch.no_grad()
def bench_moe(models: dict[str, object], prompts: int = 24, seed: int = 0, steps: int = 25,
              capacities: tuple[float, ...] = DEFAULT_CAPACITIES, schedules: tuple[str, ...] = DEFAULT_SCHEDULES,
              repeats: int = 1, batch_size: int = 24, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Rows for every model (label -> ShapesPipeline) and capacity option; see the module docstring."""
    from accel.api import accelerate_pipeline
    from accel.evals.shapes import image_generators
    from accel.moe import engine_of, moe_layers

    if prompts < 1 or steps < 1 or repeats < 1 or not models:
        raise ValueError(f"need models, prompts >= 1, steps >= 1 and repeats >= 1, got {len(models)} models, "
                         f"prompts={prompts}, steps={steps}, repeats={repeats}")
    options = [(str(c), "constant", c) for c in capacities] + [(n, n, s) for n, s in map(parse_schedule, schedules)]
    metas = prompt_set(prompts, seed)
    chunks = [metas[i:i + batch_size] for i in range(0, len(metas), batch_size)]
    rows = []
    for label, pipe in models.items():
        fast = accelerate_pipeline(pipe)
        dense = not moe_layers(pipe.transformer)
        todo = [("dense", "dense", None)] if dense else options

        def run(capacity):
            images, seconds, extra, nfe, by_sigma = [], 0.0, defaultdict(float), 0, defaultdict(float)
            for i, chunk in enumerate(chunks):
                start = time.perf_counter()
                out = fast(prompt=[m["prompt"] for m in chunk], num_inference_steps=steps, output_type="pt",
                           generator=image_generators(seed, i * batch_size, len(chunk)),
                           **({} if capacity is None else {"capacity": capacity}))
                seconds += time.perf_counter() - start
                images.append(out.images.float().cpu())
                nfe += out.stats.nfe
                for key in ("expert_flops_fraction", "routed_flops_fraction", "routed_experts_per_token",
                            "dropped_token_fraction"):
                    if key in out.stats.extra:
                        extra[key] += out.stats.extra[key] * len(chunk) / len(metas)
                for sigma, frac in out.stats.extra.get("dropped_by_sigma", {}).items():
                    by_sigma[sigma] += frac * len(chunk) / len(metas)
            return torch.cat(images), seconds, dict(extra) | {"dropped_by_sigma": dict(by_sigma)}, nfe

        run(todo[0][2])  # an untimed warm-up
        best: dict[str, float] = {}
        results = {}
        for _ in range(repeats):  # every option once per round, so a slow spell of the machine hits all alike
            for name, method, capacity in todo:
                images, seconds, extra, nfe = run(capacity)
                results.setdefault(name, (images, extra, nfe))
                best[name] = min(best.get(name, float("inf")), seconds)
        assert engine_of(pipe.transformer) is None  # every call put the model back
        for name, method, _ in todo:
            images, extra, nfe = results[name]
            accuracy, per_image, per_tag, correct = _accuracy(images, metas)
            row = {"model": label, "capacity": None if method == "dense" else (
                       float(name) if method == "constant" else name),
                   "method": method, "accuracy": accuracy, "accuracy_images": per_image, "per_tag": per_tag,
                   "correct": correct,
                   "seconds": round(best[name], 3), "expert_flops_fraction": extra.get("expert_flops_fraction"),
                   "routed_flops_fraction": extra.get("routed_flops_fraction"),
                   "dropped_token_fraction": extra.get("dropped_token_fraction"),
                   "dropped_by_sigma": extra.get("dropped_by_sigma") or None,
                   "ffn_macs_per_token": ffn_macs_per_token(pipe.transformer, extra.get("routed_experts_per_token")),
                   "nfe": nfe, "prompts": prompts,
                   "seed": seed, "steps": steps, "repeats": repeats}
            rows.append(row)
            if progress:
                progress(row)
    return rows


def plot_moe(rows: list[dict], path: str) -> bool:
    """Accuracy against expert FLOPs fraction, one curve per model and method; False without matplotlib."""
    from accel.evals.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    curves: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        curves[(r["model"], "constant" if r["method"] == "constant" else r["method"])].append(
            (r["expert_flops_fraction"] if r["expert_flops_fraction"] is not None else 1.0, r["accuracy"]))
    for (model, method), points in sorted(curves.items()):
        points.sort()
        ax.plot(*zip(*points), marker="o" if method == "constant" else "s",
                linestyle="-" if method == "constant" else "none", label=f"{model} ({method})")
    ax.set_xlabel("expert FLOPs (fraction of the trained capacities')")
    ax.set_ylabel("checker accuracy (GenEval rules)")
    ax.legend(fontsize=7)
    save(fig, path)
    return True
