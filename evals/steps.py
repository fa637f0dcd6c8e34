"""Benchmark of step-saving methods on a built-in model: quality against measured runtime.

Every method generates the same seeded prompt set (evals.shapes' prompts and per-image generators) in the same run,
and is compared with the full-step run: checker accuracy (GenEval rules), and PSNR / SSIM of each image against
the full-step image of the same seed. `runtime` is the method's wall time over the full-step run's, measured here
(one untimed warm-up run first), so it includes everything a method does not save (text encoder, VAE or
convolutional stem and head, bookkeeping).

Methods (label: what is varied):
- uniform:steps=N   fewer Euler steps on the pipeline's own schedule;
- hsa:runtime=R     heterogeneous per-token steps (accel.schedulers.hsa) within R of the full-step token compute
                    (HSAConfig's other options too, e.g. hsa:runtime=0.25,decay=0,grid_steps=all);
- hsa-exact:runtime=R   the same allocation with every token computed each step (no saving: a diagnostic that
                    separates the allocation's quality from the K/V cache's approximation; not in the default grid);
- fbc:threshold=T   diffusers' FirstBlockCache;
- taylorseer:interval=I   diffusers' TaylorSeer (every block's output predicted between full steps);
- magcache:threshold=T    diffusers' MagCache, calibrated on the first prompt batch of this run;
- dbcache:threshold=T  cache-dit's DBCache (F1B0: the first block always computed, its residual change against T
                    decides whether the rest is reused), transformer-only with a persistent context, where cache-dit
                    is installed (pip install "accel[bench]"; an optional dependency, skipped with a warning otherwise).
"""

from __future__ import annotations

import contextlib
import io
import platform
import re
import time
import warnings
from collections import defaultdict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from accel.schedulers.hsa import HSAConfig
from accel.shapes import check, prompt_set


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (N, H, W, C) images in [0, 1] (capped at 100 dB for identical images)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).float()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per image (Wang et al. 2004: Gaussian window 11 / 1.5, K1 0.01, K2 0.03, data range 1), averaged over
    channels, of (N, H, W, C) images in [0, 1]; valid windows only, as skimage's default."""
    x, y = a.permute(0, 3, 1, 2).double(), b.permute(0, 3, 1, 2).double()
    c = x.shape[1]
    g = torch.exp(-(torch.arange(window, dtype=torch.float64) - window // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def default_methods(steps: int) -> list[str]:
    """The method grid: knobs chosen to land near 75%, 50% and 25% of the full-step run where the method can."""
    uniform = sorted({max(1, round(steps * f)) for f in (0.75, 0.5, 0.25)}, reverse=True)
    return ([f"uniform:steps={n}" for n in uniform]
            + [f"hsa:runtime={r}" for r in (0.75, 0.5, 0.25)]
            + [f"fbc:threshold={t}" for t in (0.05, 0.1, 0.2)]
            + [f"taylorseer:interval={i}" for i in (2, 3, 5)]
            + [f"magcache:threshold={t}" for t in (0.06, 0.12, 0.24)]
            + ([f"dbcache:threshold={t}" for t in (0.08, 0.16, 0.32)] if _has_cache_dit() else []))


def _has_cache_dit() -> bool:
    import importlib.util

    return importlib.util.find_spec("cache_dit") is not None


_HSA_OPTIONS = ("warmup", "decay", "max_skips", "grid_steps", "score", "kv", "refresh_every")
_KNOBS = {"uniform": "steps", "hsa": "runtime", "hsa-exact": "runtime", "fbc": "threshold", "taylorseer": "interval",
          "magcache": "threshold", "dbcache": "threshold"}


def split_methods(text: str) -> list[str]:
    """'uniform:steps=12,hsa:runtime=0.5,decay=0' -> ['uniform:steps=12', 'hsa:runtime=0.5,decay=0']: a part
    without a ':' is one more option of the method before it."""
    methods: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part and ":" not in part and methods:
            methods[-1] += "," + part
        elif part:
            methods.append(part)
    return methods


def parse_method(text: str) -> tuple[str, dict]:
    """'name:key=value,...' -> (name, {key: value}); ValueError naming what is allowed. Each method takes its knob
    (a number); hsa and hsa-exact also take HSAConfig's warmup, decay and max_skips (a number or auto), grid_steps
    (a number, auto or all), score (dynamics or displacement), kv (extrapolate, refresh or stale) and refresh_every."""
    name, _, rest = text.partition(":")
    if name not in _KNOBS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(_KNOBS)} (as name:key=value, e.g. "
                         "hsa:runtime=0.5)")
    knob = _KNOBS[name]
    allowed = (knob, *_HSA_OPTIONS) if name.startswith("hsa") else (knob,)
    options = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in allowed:
            raise ValueError(f"method {name} takes {knob}=<number>"
                             + (f" (and {', '.join(_HSA_OPTIONS)})" if len(allowed) > 1 else "") + f", got {part!r}")
        if key in ("score", "kv") or (key in ("grid_steps", "decay", "max_skips") and value == "auto") or (
                key == "grid_steps" and value == "all"):
            options[key] = None if value == "all" else value
            continue
        try:
            options[key] = int(value) if re.fullmatch(r"\d+", value) else float(value)
        except ValueError:
            raise ValueError(f"{name}: {key} must be a number, got {value!r}") from None
    if knob not in options:
        raise ValueError(f"method {name} needs {knob}=<number>")
    if name.startswith("hsa"):
        HSAConfig(**options)  # its own checks, e.g. decay in [0, 8]
    return name, options


class _Cache:
    """A diffusers cache hook on the transformer for one method run; removed (disable_cache) afterwards."""

    def __init__(self, model, name: str, options: dict, steps: int, mag_ratios):
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        if not hasattr(model, "enable_cache"):
            raise ValueError(f"{type(model).__name__} has no diffusers cache support (CacheMixin)")
        self.model = model
        if name == "fbc":
            config = FirstBlockCacheConfig(threshold=options["threshold"])
        elif name == "taylorseer":
            config = TaylorSeerCacheConfig(cache_interval=options["interval"], disable_cache_before_step=3,
                                           max_order=1, taylor_factors_dtype=torch.float32,
                                           cache_identifiers=[r"blocks\.\d+"])
        else:
            config = MagCacheConfig(threshold=options["threshold"], num_inference_steps=steps, mag_ratios=mag_ratios)
        model.enable_cache(config)

    def reset(self):
        self.model._reset_stateful_cache()

    def remove(self):
        self.model.disable_cache()


class _CacheDiT:
    """cache-dit's DBCache on the transformer's blocks (transformer-only), enabled afresh for every generation: its
    context carries state from one generation into the next (measured: the same seeded batch comes out differently
    on a second run in one context), so reset() disables and re-enables it; removed afterwards."""

    def __init__(self, model, options: dict, steps: int):
        import logging

        import cache_dit

        for name, logger in logging.root.manager.loggerDict.items():  # its per-call lines would drown the progress
            if name.startswith(("cache_dit", "CACHE_DIT")) and isinstance(logger, logging.Logger):
                for handler in logger.handlers:  # cache-dit's loggers share one stdout handler
                    handler.setLevel(logging.ERROR)
        self.model, self.cache_dit, self.options, self.steps = model, cache_dit, options, steps
        self._enable()

    def _enable(self):
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

        # The built-in DiTs' blocks take (hidden_states, temb, mask) and return hidden_states: Pattern_3.
        adapter = BlockAdapter(pipe=None, transformer=self.model, blocks=self.model.blocks,
                               forward_pattern=ForwardPattern.Pattern_3)
        self.cache_dit.enable_cache(adapter, cache_config=DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=self.options["threshold"],
            max_warmup_steps=3, num_inference_steps=self.steps, enable_separate_cfg=False))

    def reset(self):
        self.remove()
        self._enable()

    def remove(self):
        self.cache_dit.disable_cache(self.model)


def calibrate_magcache(pipe, call: dict, steps: int) -> list[float]:
    """MagCache's magnitude ratios for this model and schedule: one calibration run (diffusers prints them)."""
    from diffusers.hooks import MagCacheConfig

    model = pipe.transformer
    model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            pipe(**call)
    finally:
        model.disable_cache()
    found = re.findall(r"\[([-0-9.,\se]+)\]", buffer.getvalue())
    if not found:
        raise RuntimeError("MagCache calibration printed no ratios")
    return [float(v) for v in found[-1].split(",")]


def _geneval(flags: list[tuple[str, bool]]) -> float:
    """Accuracy per tag, averaged over the tags present (GenEval's overall score)."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for tag, ok in flags:
        by_tag[tag].append(ok)
    return float(np.mean([np.mean(v) for v in by_tag.values()]))


@torch.no_grad()
def bench_steps(pipe, prompts: int = 24, seed: int = 0, steps: int = 25, methods: list[str] | None = None,
                batch_size: int = 24, progress: Callable[[dict], None] | None = None, repeats: int = 1) -> list[dict]:
    """Rows (one per method, the full-step run first) for a ShapesPipeline or ShapesVideoPipeline; see the module
    docstring. Each wall time is the best of `repeats` timing rounds (each round runs every method once, after one
    untimed warm-up run); video PSNR / SSIM are per frame, averaged over every frame of every clip."""
    from accel.api import accelerate_pipeline
    from accel.evals.shapes import image_generators

    if prompts < 1 or steps < 2 or repeats < 1:
        raise ValueError(f"need prompts >= 1, steps >= 2 and repeats >= 1, got prompts={prompts}, steps={steps}, "
                         f"repeats={repeats}")
    methods = default_methods(steps) if methods is None else methods
    parsed = [(m, *parse_method(m)) for m in methods]
    apipe = accelerate_pipeline(pipe)
    video = type(pipe).__name__ == "ShapesVideoPipeline"
    if video:
        from accel.shapes.video import video_prompt_set

        metas = video_prompt_set(prompts, seed)
    else:
        metas = prompt_set(prompts, seed)
    batches = [metas[i:i + batch_size] for i in range(0, len(metas), batch_size)]

    def call(i: int, chunk: list[dict], n_steps: int) -> dict:
        return {"prompt": [m["prompt"] for m in chunk], "num_inference_steps": n_steps, "output_type": "pt",
                "generator": image_generators(seed, i * batch_size, len(chunk))}

    def run(n_steps: int, extra: dict | None = None, cache=None) -> tuple[torch.Tensor, float, dict]:
        """The method's outputs (seeded: the same every time) and its wall time."""
        images, seconds, info = [], 0.0, {}
        for i, chunk in enumerate(batches):
            if cache is not None:
                cache.reset()
            start = time.perf_counter()
            out = apipe(**call(i, chunk, n_steps), **(extra or {}))
            seconds += time.perf_counter() - start
            # images (N, H, W, 3); clips (N, F, H, W, 3)
            images.append(out.frames.float().cpu() if video else out.images.permute(0, 2, 3, 1).float().cpu())
            info = out.stats.extra
        return torch.cat(images).clamp(0, 1), seconds, info

    def run_method(name: str, options: dict) -> tuple[torch.Tensor, float, dict]:
        cache = None
        try:
            if name in ("fbc", "taylorseer", "magcache"):
                cache = _Cache(pipe.transformer, name, options, steps, mag_ratios)
            elif name == "dbcache":
                cache = _CacheDiT(pipe.transformer, options, steps)
            if name == "uniform":
                return run(options["steps"])
            if name in ("hsa", "hsa-exact"):
                return run(steps, {"steps": HSAConfig(**options, cache=name == "hsa")})
            return run(steps, cache=cache)
        finally:
            if cache is not None:
                cache.remove()

    mag_ratios = None
    todo = [("full", "uniform", {"steps": steps})]
    for label, name, options in parsed:
        if name == "dbcache" and not _has_cache_dit():
            warnings.warn("cache-dit is not installed (pip install cache-dit): dbcache skipped", stacklevel=2)
            continue
        if name == "magcache" and mag_ratios is None:
            mag_ratios = calibrate_magcache(apipe, call(0, batches[0], steps), steps)
        todo.append((label, name, options))
    run(steps)  # an untimed warm-up (allocations, lazy imports)
    # Timing rounds: every method once per round, its best round kept, so a slow spell of the machine falls on
    # every method alike rather than on whichever ran then; the outputs are the first round's (seeded, the same).
    outputs: dict[str, tuple[torch.Tensor, dict]] = {}
    best: dict[str, float] = {}
    rows = []
    for r in range(repeats):
        for label, name, options in todo:
            images, seconds, info = run_method(name, options)
            outputs.setdefault(label, (images, info))
            best[label] = min(best.get(label, float("inf")), seconds)
            if r < repeats - 1:
                continue
            images, info = outputs[label]
            row = _row(label, name, options, images, outputs["full"][0], best[label], best["full"], metas, seed,
                       steps)
            for key in ("token_fraction", "compute_fraction"):
                if key in info:
                    row[key] = info[key]
            rows.append(row)
            if progress:
                progress(row)
    return [row | {"repeats": repeats} for row in rows]


def _row(label, name, options, images, full, seconds, full_seconds, metas, seed, steps) -> dict:
    u8 = (images * 255).round().to(torch.uint8).numpy()
    video = images.ndim == 5
    if video:
        from accel.shapes.video import check_video

        correct = [(m["tag"], check_video(clip, m).correct) for clip, m in zip(u8, metas)]
        # PSNR / SSIM per frame
        images, full = images.flatten(0, 1), full.flatten(0, 1)
    else:
        correct = [(m["tag"], check(img, m).correct) for img, m in zip(u8, metas)]
    return {
        "method": label, "family": name, "options": options, "model": "video" if video else "image",
        "runtime": round(seconds / full_seconds, 4), "seconds": round(seconds, 3),
        "accuracy": _geneval(correct), "accuracy_images": float(np.mean([c for _, c in correct])),
        "psnr": float(psnr(images, full).mean()), "ssim": float(ssim(images, full).mean()),
        "prompts": len(metas), "seed": seed, "steps": steps,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
    }


def curve_name(method: str) -> str:
    """The plot curve a method row belongs to: its family and every option but the family's budget knob
    ('hsa:runtime=0.5,kv=stale' -> 'hsa kv=stale'), so settings of one variant form one curve."""
    name, options = parse_method(method)
    return " ".join([name] + [f"{k}={'all' if v is None else v}" for k, v in options.items() if k != _KNOBS[name]])


def plot_steps(rows: list[dict], path: str) -> bool:
    """Quality (accuracy, PSNR, SSIM) against measured runtime, one curve per method variant (curve_name), as a PNG.
    Returns False, with a warning, when matplotlib is not installed."""
    from accel.evals.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    full = [r for r in rows if r["method"] == "full"]
    curves = {r["method"]: curve_name(r["method"]) for r in rows if r["method"] != "full"}
    for key, ax in zip(("accuracy", "psnr", "ssim"), axes):
        for curve in dict.fromkeys(curves.values()):
            pts = sorted((r["runtime"], r[key]) for r in rows if curves.get(r["method"]) == curve)
            if key != "accuracy":
                pts = [p for p in pts if p[1] < 99]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=curve)
        if full and key == "accuracy":
            ax.axhline(full[0]["accuracy"], color="grey", ls="--", lw=1, label="full steps")
        ax.set_xlabel("runtime (x the full-step run, measured)")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[2].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    save(fig, path)
    return True
