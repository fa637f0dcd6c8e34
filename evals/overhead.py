"""Wrapper overhead at the default path (`accel bench overhead`): each family's pipeline call against the same call
through accelerate_pipeline (issue 23's target: within 2% of the pipeline's own call).

Method (STYLE.md, Benchmarks):
- Pipelines: a tiny seeded one per family (accel.pipelines.tiny, tiny_families, tiny_nucleus: the real model
  classes at a tiny width, random weights, built offline), fp32, and the built-in shapes image / video models
  (accel.assets). Every call uses the family's guidance (CFG or embedded), `steps` steps, output_type "np".
- Each family runs `prompts` prompts of the shapes prompt set (seed `seed`), each with a generator seeded from
  `seed`, through the pipeline's own __call__ ("pipeline") and through the wrapper ("accel"), with the same
  arguments. The outputs must be equal (max_abs_diff, 0 expected), so both did the same work.
- Interleaved: rounds over (repeat, prompt); in each round the two methods run in an order that alternates round by
  round (accel.evals.timing.round_orders), after one untimed warm-up round.
- Per repeat each method's seconds are summed over the prompts; ratio = accel / pipeline within a repeat (paired).
  A row gives ratio (median over repeats) with ratio_min / ratio_max and ratio_spread ((max - min) / median),
  pipeline_ms and accel_ms (median per call) and overhead_ms (median over repeats of (accel - pipeline) per call).

On these tiny CPU models a call takes milliseconds, so the wrapper's fixed Python cost per call and per step
(binding the call, the adapter's prepare, the sampler's bookkeeping) weighs far more in the ratio than on a real
model, whose call takes seconds to minutes: overhead_ms is the figure that carries over to real sizes (the ratio
there is about 1 + overhead_ms / the real call's ms).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from accel.evals.timing import median_spread, round_orders

STEPS = 4
ORDER = "interleaved per prompt, alternating each round, one warm-up round"


def _image(size: int = 64):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def families() -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    """family -> (builder, call arguments besides prompt, generator, num_inference_steps and output_type)."""
    from accel.models import load_pipeline
    from accel.pipelines import tiny, tiny_families, tiny_nucleus

    image, text, layers = dict(height=64, width=64), dict(max_sequence_length=16), (1, 2, 3)
    return {
        "flux": (tiny.build_flux, image | text | dict(guidance_scale=3.5)),
        "flux-kontext": (tiny_families.build_flux_kontext,
                         image | text | dict(image=_image(), max_area=64 * 64, _auto_resize=False)),
        "flux2": (tiny_families.build_flux2, image | text | dict(guidance_scale=3.0, text_encoder_out_layers=layers)),
        "flux2-klein": (tiny_families.build_flux2_klein,
                        image | text | dict(guidance_scale=3.0, text_encoder_out_layers=layers)),
        "chroma": (tiny_families.build_chroma, image | text | dict(guidance_scale=4.0)),
        "sd3": (tiny.build_sd3, image | text | dict(guidance_scale=5.0)),
        "qwenimage": (tiny_families.build_qwenimage, image | text | dict(true_cfg_scale=3.0, negative_prompt="a dog")),
        "zimage": (tiny_families.build_zimage, image | text | dict(guidance_scale=3.0)),
        "nucleus": (tiny_nucleus.build_nucleus, image | dict(guidance_scale=4.0)),
        "wan": (tiny.build_wan, image | text | dict(num_frames=9, guidance_scale=5.0)),
        "wan2.2": (lambda: tiny.build_wan(boundary_ratio=0.875),
                   image | text | dict(num_frames=9, guidance_scale=4.0, guidance_scale_2=2.0)),
        "ltx": (tiny_families.build_ltx, text | dict(height=32, width=32, num_frames=9, guidance_scale=3.0)),
        "hunyuanvideo15": (tiny_families.build_hunyuanvideo15, dict(height=32, width=32, num_frames=5)),
        "shapes": (lambda: load_pipeline("shapes"), dict(guidance_scale=2.0)),
        "shapes-video": (lambda: load_pipeline("shapes-video"), dict(guidance_scale=2.0)),
    }


FAMILIES = ("flux", "flux-kontext", "flux2", "flux2-klein", "chroma", "sd3", "qwenimage", "zimage", "nucleus", "wan",
            "wan2.2", "ltx", "hunyuanvideo15", "shapes", "shapes-video")


def check_families(names: list[str]) -> None:
    """Raise ValueError naming the allowed families unless every name is one (and there is at least one)."""
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown families {', '.join(unknown) or '(none given)'}; allowed: {', '.join(FAMILIES)}")


def _frames(out) -> np.ndarray:
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


@torch.no_grad()
def bench_family(pipe, call: dict[str, Any], prompts: list[str], seed: int, steps: int, repeats: int) -> dict:
    """One row: the pipeline's call and the wrapped call on every prompt, interleaved (see the module docstring)."""
    from accel import accelerate_pipeline

    fast = accelerate_pipeline(pipe)
    methods = {"pipeline": pipe, "accel": fast}
    names = list(methods)

    def run(method: str, prompt: str):
        kw = call | dict(prompt=prompt, num_inference_steps=steps, output_type="np")
        start = time.perf_counter()
        out = methods[method](**kw, generator=torch.Generator().manual_seed(seed))
        return time.perf_counter() - start, out

    for method in names:  # warm-up: first-call costs (allocator, lazy imports) land on no timed call
        run(method, prompts[0])
    seconds = {m: [0.0] * repeats for m in names}
    outputs: dict[tuple[str, int], np.ndarray] = {}
    for r, i, order in round_orders(len(names), len(prompts), repeats):
        for k in order:
            elapsed, out = run(names[k], prompts[i])
            seconds[names[k]][r] += elapsed
            if r == 0:
                outputs[names[k], i] = _frames(out)
    diff = max(float(np.abs(outputs["accel", i] - outputs["pipeline", i]).max()) for i in range(len(prompts)))
    n = len(prompts)
    ratio = median_spread([a / p for a, p in zip(seconds["accel"], seconds["pipeline"])])
    return {
        "pipeline_class": type(pipe).__name__, "path": fast.stats.path, "nfe_per_call": fast.stats.nfe,
        "steps": steps, "ratio": ratio.median, "ratio_min": ratio.min, "ratio_max": ratio.max,
        "ratio_spread": ratio.spread,
        "pipeline_ms": 1e3 * statistics.median(seconds["pipeline"]) / n,
        "accel_ms": 1e3 * statistics.median(seconds["accel"]) / n,
        "overhead_ms": 1e3 * statistics.median([(a - p) / n for a, p in zip(seconds["accel"], seconds["pipeline"])]),
        "max_abs_diff": diff, "prompts": n, "repeats": repeats, "seed": seed, "order": ORDER,
    }


def bench_overhead(names: tuple[str, ...] = FAMILIES, prompts: int = 4, seed: int = 0, steps: int = STEPS,
                   repeats: int = 5, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per family (`family` plus bench_family's keys), in the order given; see the module docstring.

    Raises ValueError for an unknown family or prompts, steps or repeats < 1."""
    from accel.shapes.prompts import prompt_set

    check_families(list(names))
    if prompts < 1 or steps < 1 or repeats < 1:
        raise ValueError(f"prompts, steps and repeats must be >= 1, got {prompts}, {steps} and {repeats}")
    texts = [p["prompt"] for p in prompt_set(prompts, seed)]
    known = families()
    rows = []
    for name in names:
        builder, call = known[name]
        rows.append({"family": name} | bench_family(builder(), call, texts, seed, steps, repeats))
        if progress is not None:
            progress(rows[-1])
    return rows
