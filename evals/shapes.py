"""The built-in exact benchmark: generate a seeded shapes-world prompt set and score it with the checker.

`--seed` picks both the prompt set and the sampling seeds; each image has its own generator (seed, index), so a
result does not depend on the batch size or on the number of processes the prompts are sharded over.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from accel.evals.io import run_info
from accel.evals.shard import RunFolder, Shard, run_chunks
from accel.shapes import TAGS, check_detections, prompt_set


def image_generators(seed: int, start: int, n: int) -> list[torch.Generator]:
    """Generators of images start .. start + n - 1 (accel.evals.geneval.sample_seed(seed, i) for each)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(n)]


def evaluate_shapes(pipe, prompts: int = 240, seed: int = 0, steps: int = 25, guidance_scale: float | None = None,
                    batch_size: int = 48, progress: Callable[[int, int], None] | None = None,
                    state: dict | None = None, out: str | Path | None = None, overwrite: bool = False,
                    shard: Shard = Shard()) -> dict:
    """Checker accuracy of `pipe` (a ShapesPipeline, plain or accelerated) on a seeded prompt set.

    Each image is judged by accel.evals.geneval.score_image with the shapes world's exact detector, the code path
    `accel eval geneval --detector shapes` takes. Prompts go in chunks of batch_size, this process's share only
    (`shard`: Shard.from_env() under torchrun / accelerate launch; the chunks and so the results are the same for
    any number of processes); with `out`, finished chunks are kept there and a run with the same settings resumes
    (accel.evals.shard). progress(prompts done, prompts) is this process's.

    Returns a dict with overall / per_tag accuracy (GenEval rules), the strict variants (no extra objects),
    n, steps, seed, seconds, nfe, and run_info(state) (`state`: the code's state taken before the run, e.g. by
    accel.evals.io.require_clean; None reads it at the end).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from accel.api import accelerate_pipeline
    from accel.evals.detectors import ShapesDetector
    from accel.evals.geneval import sample_images, sample_seed, score_image

    apipe = accelerate_pipeline(pipe)
    metas = prompt_set(prompts, seed)
    call = {"num_inference_steps": steps} | ({} if guidance_scale is None else {"guidance_scale": guidance_scale})
    detector = ShapesDetector()

    def work(indices: range) -> dict:
        chunk = metas[indices.start:indices.stop]
        images, nfe = sample_images(apipe, [m["prompt"] for m in chunk], [sample_seed(seed, i) for i in indices],
                                    call, per_image=False)
        rows = []
        for image, dets, m in zip(images, detector.detect(images), chunk):
            rows.append({"tag": m["tag"], "correct": score_image(image, dets, m)[0].correct,
                         "strict": check_detections(dets, m, strict=True).correct})
        return {"rows": rows, "nfe": nfe}

    folder = None
    if out is not None:
        folder = RunFolder(out, {"eval": "shapes", "prompts": prompts, "seed": seed, "steps": steps,
                                 "guidance_scale": guidance_scale, "batch_size": batch_size,
                                 "model": getattr(pipe, "name_or_path", None) or type(pipe).__name__})
        folder.check(overwrite)
        shard.barrier()
        if shard.main:
            folder.prepare(overwrite)
        shard.barrier()
    records = run_chunks(len(metas), batch_size, work, shard, folder, progress)
    rows = [row for r in records for row in r["rows"]]
    correct = np.array([r["correct"] for r in rows], bool)
    by_tag, by_tag_strict = defaultdict(list), defaultdict(list)
    for m, r in zip(metas, rows):
        by_tag[m["tag"]].append(r["correct"])
        by_tag_strict[m["tag"]].append(r["strict"])
    per_tag = {t: float(np.mean(by_tag[t])) for t in TAGS if by_tag[t]}
    return {
        "overall": float(np.mean(list(per_tag.values()))),  # GenEval averages the tags
        "per_tag": per_tag,
        "overall_strict": float(np.mean([np.mean(by_tag_strict[t]) for t in per_tag])),
        "per_tag_strict": {t: float(np.mean(by_tag_strict[t])) for t in per_tag},
        "accuracy_images": float(correct.mean()),
        "n": len(metas), "steps": steps, "seed": seed, "seconds": round(sum(r["seconds"] for r in records), 2),
        "nfe": sum(r["nfe"] for r in records),
        "guidance_scale": guidance_scale if guidance_scale is not None else "pipeline default",
    } | run_info(state)


def evaluate_shapes_video(pipe, prompts: int = 48, seed: int = 0, steps: int = 25,
                          guidance_scale: float | None = None, batch_size: int = 16,
                          progress: Callable[[int, int], None] | None = None, pipeline_kwargs: dict | None = None,
                          state: dict | None = None) -> dict:
    """Video checker accuracy (accel.shapes.video.check_video) of a ShapesVideoPipeline on a seeded prompt set.

    Returns overall / per_tag accuracy (the tags averaged, as GenEval), the strict variants (no extra objects),
    frame_accuracy (frames where every prompted object is detected), n, steps, seed, seconds, nfe.
    `pipeline_kwargs` are extra options for the accelerated pipeline's call, e.g. {"steps": "hsa", "runtime": 0.5};
    `state` and progress(prompts done, prompts) are as in evaluate_shapes.
    """
    from accel.api import accelerate_pipeline
    from accel.shapes.video import VIDEO_TAGS, check_video, video_prompt_set

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    apipe = accelerate_pipeline(pipe)
    metas = video_prompt_set(prompts, seed)
    extra = dict(pipeline_kwargs or {}) | ({} if guidance_scale is None else {"guidance_scale": guidance_scale})
    results = []
    start, nfe = time.perf_counter(), 0
    for i in range(0, len(metas), batch_size):
        chunk = metas[i:i + batch_size]
        out = apipe([m["prompt"] for m in chunk], num_inference_steps=steps, output_type="np",
                    generator=image_generators(seed, i, len(chunk)), **extra)
        nfe += out.stats.nfe
        for clip, m in zip(out.frames, chunk):
            u8 = (clip * 255).round().astype(np.uint8)
            results.append((m["tag"], check_video(u8, m), check_video(u8, m, strict=True).correct))
        if progress:
            progress(len(results), len(metas))
    seconds = time.perf_counter() - start
    per_tag = {t: float(np.mean([r.correct for tag, r, _ in results if tag == t])) for t in VIDEO_TAGS
               if any(tag == t for tag, _, _ in results)}
    per_tag_strict = {t: float(np.mean([s for tag, _, s in results if tag == t])) for t in per_tag}
    return {
        "overall": float(np.mean(list(per_tag.values()))), "per_tag": per_tag,
        "overall_strict": float(np.mean(list(per_tag_strict.values()))), "per_tag_strict": per_tag_strict,
        "frame_accuracy": float(np.mean([r.frame_accuracy for _, r, _ in results])),
        "n": len(metas), "steps": steps, "seed": seed, "seconds": round(seconds, 2), "nfe": nfe,
        "guidance_scale": guidance_scale if guidance_scale is not None else "pipeline default",
    } | run_info(state)
