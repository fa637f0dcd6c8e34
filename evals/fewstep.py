"""Benchmark of few-step students against their teacher on a built-in model: quality at a number of NFE.

Every method generates the same seeded prompt set (evals.shapes' prompts and per-image generators): the teacher at
its full steps with CFG ("teacher"), the teacher at fewer uniform Euler steps ("euler", CFG kept: 2 NFE a step),
and each student at each step count it was trained for (its method, "dmd" or "sc-dmd", or "ar"; 1 NFE a step).
Rows carry checker accuracy (GenEval rules), PSNR / SSIM against the teacher's own sample of the same seed, NFE per
sample and wall time; timing is interleaved (each round runs every method once; a method's time is its best round)
so a change in machine load falls on every method alike. A student row also carries its semigroup defect (Salt's
self-consistency measure, `semigroup_defect`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from accel.schedulers.fewstep import StudentSpec, fewstep_grid, fewstep_update, find_student


@torch.no_grad()
def semigroup_defect(adapter, prepared, spec: StudentSpec, nfe: int, generator: torch.Generator) -> float:
    """Mean squared difference between the student's direct jump over each interval of its nfe-step grid and the
    composition of its two jumps through the interval's midpoint on the 2x denser grid (Salt's training grid), at
    the states of the student's own run; 0 for an exact flow map. Costs 3 NFE per interval and sample."""
    grid = spec.grid(nfe).sigmas
    dense = fewstep_grid(_dense_timesteps(spec.timesteps[nfe]), spec.shift).sigmas
    x, cond, defects = prepared.x, prepared.cond, []
    for i in range(nfe):
        s, e = grid[i], grid[i + 1]
        m = dense[2 * i + 1]
        v = adapter.velocity(x, s, cond)
        direct = x.float() - (s - e) * v.float()
        x_m = (x.float() - (s - m) * v.float()).to(x.dtype)
        composed = x_m.float() - (m - e) * adapter.velocity(x_m, m, cond).float()
        defects.append(((direct - composed) ** 2).mean().item())
        if i + 1 < nfe:  # the student's own re-noising rule to the next grid point
            x = fewstep_update(x, v, s, e, "renoise", generator)
    return float(np.mean(defects))


def _dense_timesteps(timesteps) -> list[int]:
    """The step list with the midpoint of each interval inserted (the last interval's midpoint between it and 0):
    [1000, 750, 500, 250] -> [1000, 875, 750, 625, 500, 375, 250, 125], Salt's 8-point training grid."""
    ts = list(timesteps) + [0]
    out = []
    for a, b in zip(ts[:-1], ts[1:]):
        out += [a, (a + b) // 2]
    return out


def _methods(students: dict[str, object], teacher_steps: int, euler_steps: list[int]) -> list[tuple]:
    todo = [("teacher", "teacher", None, teacher_steps)]
    todo += [(f"euler:steps={n}", "euler", None, n) for n in euler_steps]
    for label, pipe in students.items():
        spec = find_student(pipe)
        if spec is None:
            raise ValueError(f"student {label!r} is not a distilled student (no student.json)")
        todo += [(f"{label}:nfe={n}", spec.method, pipe, n) for n in spec.nfes]
    return todo


@torch.no_grad()
def bench_fewstep(teacher, students: dict[str, object], prompts: int = 24, seed: int = 0, steps: int = 25,
                  euler_steps: tuple[int, ...] = (2, 4, 8), batch_size: int = 24, repeats: int = 1,
                  progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Rows (the teacher first) for a ShapesPipeline or ShapesVideoPipeline teacher and students of it (label ->
    pipeline loaded from a student folder); see the module docstring."""
    from accel.api import accelerate_pipeline
    from accel.evals.shapes import image_generators
    from accel.evals.steps import _geneval, psnr, ssim

    if prompts < 1 or steps < 2 or repeats < 1 or any(n < 1 for n in euler_steps):
        raise ValueError(f"need prompts >= 1, steps >= 2, repeats >= 1 and euler steps >= 1, got prompts={prompts}, "
                         f"steps={steps}, repeats={repeats}, euler_steps={list(euler_steps)}")
    video = type(teacher).__name__ == "ShapesVideoPipeline"
    if video:
        from accel.shapes.video import video_prompt_set

        metas = video_prompt_set(prompts, seed)
    else:
        from accel.shapes import prompt_set

        metas = prompt_set(prompts, seed)
    batches = [metas[i:i + batch_size] for i in range(0, len(metas), batch_size)]
    wrapped = {id(p): accelerate_pipeline(p) for p in [teacher, *students.values()]}
    todo = _methods(students, steps, list(euler_steps))
    chunk = next((chunk_length(p) for p in students.values() if chunk_length(p)), None) if video else None

    def start_noise(i: int, chunk: list[dict]) -> torch.Tensor:
        """The start latents the teacher's run draws for this batch (per-image generators), so every method
        starts each image from the same noise."""
        gens = image_generators(seed, i * batch_size, len(chunk))
        prepared = wrapped[id(teacher)].adapter.prepare(prompt=[m["prompt"] for m in chunk], num_inference_steps=2,
                                                         generator=gens)
        return prepared.x

    latents = [start_noise(i, chunk) for i, chunk in enumerate(batches)]

    def run(pipe, n_steps: int, fewstep: bool) -> tuple[torch.Tensor, float, int]:
        apipe, images, seconds, nfe = wrapped[id(pipe)], [], 0.0, 0
        for i, chunk in enumerate(batches):
            call = {"prompt": [m["prompt"] for m in chunk], "num_inference_steps": n_steps, "output_type": "pt",
                    "generator": image_generators(seed, i * batch_size, len(chunk))}
            if fewstep:  # the same start noise; one generator draws the re-noising noise
                call |= {"sampler": "fewstep", "latents": latents[i],
                         "generator": torch.Generator().manual_seed(seed * 100_003 + i)}
            start = time.perf_counter()
            out = apipe(**call)
            seconds += time.perf_counter() - start
            nfe += out.stats.nfe
            images.append(out.frames.float().cpu() if video else out.images.permute(0, 2, 3, 1).float().cpu())
        return torch.cat(images).clamp(0, 1), seconds, nfe

    run(teacher, 2, False)  # an untimed warm-up (allocations, lazy imports)
    outputs, best = {}, {}
    for _ in range(repeats):
        for label, method, pipe, n in todo:
            images, seconds, nfe = run(pipe or teacher, n, pipe is not None)
            outputs.setdefault(label, (images, nfe))
            best[label] = min(best.get(label, float("inf")), seconds)
    rows = []
    for label, method, pipe, n in todo:
        images, nfe = outputs[label]
        row = _row(label, method, n, images, outputs["teacher"][0], nfe / len(metas), best[label], best["teacher"],
                   metas, video, _geneval, psnr, ssim)
        if chunk is not None:  # seams: frame-to-frame change at the AR students' chunk boundaries vs inside
            row |= seams(images, chunk)
        if pipe is not None:
            adapter = wrapped[id(pipe)].adapter
            spec = find_student(pipe)
            call = {"prompt": [m["prompt"] for m in metas[:batch_size]], "num_inference_steps": n,
                    "generator": torch.Generator().manual_seed(seed)} | spec.call_defaults
            # the defect is measured on the student's whole-sample map; a streaming (AR) student has none
            row["semigroup_defect"] = None if chunk_length(pipe) else semigroup_defect(
                adapter, adapter.prepare(**call), spec, n, torch.Generator().manual_seed(seed + 1))
            row["timesteps"] = list(spec.timesteps[n])
        row |= {"prompts": len(metas), "seed": seed, "teacher_steps": steps, "repeats": repeats}
        rows.append(row)
        if progress:
            progress(row)
    return rows


def chunk_length(pipe) -> int | None:
    """Frames per chunk of an autoregressive (chunk-causal) student; None for any other pipeline."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    frames = getattr(config, "chunk_frames", None) if config is not None else None
    return None if frames is None else frames * config.patch_frames


def seams(clips: torch.Tensor, chunk: int) -> dict:
    """Mean absolute frame-to-frame change of clips (N, F, H, W, C) across chunk boundaries (frame chunk*k - 1 to
    chunk*k) and inside chunks, and their ratio: about 1 when chunks join without a seam."""
    diff = (clips[:, 1:] - clips[:, :-1]).abs().mean(dim=(0, 2, 3, 4))  # (F - 1,): frame t -> t + 1
    at = torch.tensor([(t + 1) % chunk == 0 for t in range(diff.numel())])
    boundary, inner = float(diff[at].mean()), float(diff[~at].mean())
    return {"chunk_frames": chunk, "boundary_change": boundary, "inner_change": inner,
            "seam_ratio": boundary / inner if inner > 0 else float("nan")}


def _row(label, method, n, images, teacher, nfe, seconds, teacher_seconds, metas, video, geneval, psnr, ssim):
    u8 = (images * 255).round().to(torch.uint8).numpy()
    if video:
        from accel.shapes.video import check_video

        results = [check_video(clip, m) for clip, m in zip(u8, metas)]
        correct = [(m["tag"], r.correct) for r, m in zip(results, metas)]
        clauses = {"persistence": float(np.mean([r.persistent for r in results])),
                   "motion": float(np.mean([r.moving for r in results]))}
        images, teacher = images.flatten(0, 1), teacher.flatten(0, 1)
    else:
        from accel.shapes import check

        correct, clauses = [(m["tag"], check(img, m).correct) for img, m in zip(u8, metas)], {}
    return clauses | {"method": method, "label": label, "steps": n, "nfe": nfe, "model": "video" if video else "image",
            "accuracy": geneval(correct), "accuracy_images": float(np.mean([c for _, c in correct])),
            "per_tag": {t: float(np.mean([c for u, c in correct if u == t]))
                        for t in dict.fromkeys(u for u, _ in correct)},
            "correct": [int(c) for _, c in correct],  # per prompt, in prompt order: paired comparisons between rows
            "psnr": float(psnr(images, teacher).mean()), "ssim": float(ssim(images, teacher).mean()),
            "seconds": round(seconds, 3), "runtime": round(seconds / teacher_seconds, 4)}


def plot_fewstep(rows: list[dict], path: str) -> bool:
    """Accuracy against NFE per sample, one curve per method (teacher Euler steps, each student), as a PNG.
    Returns False, with a warning, when matplotlib is not installed."""
    from accel.evals.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    curves: dict[str, list] = {}
    for r in rows:
        curves.setdefault(r["label"].split(":")[0], []).append((r["nfe"], r["accuracy"]))
    for name, pts in curves.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE per sample")
    ax.set_ylabel("accuracy (exact checker)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save(fig, path)
    return True
