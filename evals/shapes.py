"""The built-in exact benchmark: generate a seeded shapes-world prompt set and score it with the checker.

`--seed` picks both the prompt set and the sampling seeds; each image has its own generator (seed, index), so a
result does not depend on the batch size.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from accel.evals.io import run_info
from accel.shapes import TAGS, check, prompt_set


def image_generators(seed: int, start: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(n)]


def evaluate_shapes(pipe, prompts: int = 240, seed: int = 0, steps: int = 25, guidance_scale: float | None = None,
                    batch_size: int = 48, progress: Callable[[int], None] | None = None) -> dict:
    """Checker accuracy of `pipe` (a ShapesPipeline, plain or accelerated) on a seeded prompt set.

    Returns a dict with overall / per_tag accuracy (GenEval rules), the strict variants (no extra objects),
    n, steps, seed, seconds, nfe.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from accel.api import accelerate_pipeline

    apipe = accelerate_pipeline(pipe)
    metas = prompt_set(prompts, seed)
    extra = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    correct, strict = np.zeros(len(metas), bool), np.zeros(len(metas), bool)
    start, nfe = time.perf_counter(), 0
    for i in range(0, len(metas), batch_size):
        chunk = metas[i:i + batch_size]
        out = apipe([m["prompt"] for m in chunk], num_inference_steps=steps, output_type="np",
                    generator=image_generators(seed, i, len(chunk)), **extra)
        nfe += out.stats.nfe
        for j, (img, m) in enumerate(zip(out.images, chunk)):
            u8 = (img * 255).round().astype(np.uint8)
            correct[i + j] = check(u8, m).correct
            strict[i + j] = check(u8, m, strict=True).correct
        if progress:
            progress(len(chunk))
    seconds = time.perf_counter() - start
    by_tag, by_tag_strict = defaultdict(list), defaultdict(list)
    for m, c, s in zip(metas, correct, strict):
        by_tag[m["tag"]].append(c)
        by_tag_strict[m["tag"]].append(s)
    per_tag = {t: float(np.mean(by_tag[t])) for t in TAGS if by_tag[t]}
    return {
        "overall": float(np.mean(list(per_tag.values()))),  # GenEval averages the tags
        "per_tag": per_tag,
        "overall_strict": float(np.mean([np.mean(by_tag_strict[t]) for t in per_tag])),
        "per_tag_strict": {t: float(np.mean(by_tag_strict[t])) for t in per_tag},
        "accuracy_images": float(correct.mean()),
        "n": len(metas), "steps": steps, "seed": seed, "seconds": round(seconds, 2), "nfe": nfe,
        "guidance_scale": guidance_scale if guidance_scale is not None else "pipeline default",
    } | run_info()
