"""`accel eval geneval`: GenEval's folder layout, results and summary for any pipeline, with accel's options.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from accel.cli.main import (ALLOW_DIRTY, OVERWRITE, UsageError, _eval_bar, _eval_progress, _load,
                            accel_call_options, console, eval_app, record_state, saving, user_errors)


@eval_app.command("geneval")
def eval_geneval(
    metadata: Optional[Path] = typer.Option(None, help="GenEval's evaluation_metadata.jsonl (or any file in its "
                                            "format); not with --score-only."),
    out: Path = typer.Option(..., help="Output folder: GenEval's layout (<index>/metadata.jsonl, "
                             "<index>/samples/<k>.png, <index>/grid.png), results.jsonl, summary.json."),
    score_only: bool = typer.Option(False, "--score-only", help="Score the GenEval layout already in --out (made by "
                                    "any tool, GenEval's script included): no model, no --metadata."),
    model: str = typer.Option("shapes", help="Built-in model name, diffusers pipeline folder, or hub id."),
    images_per_prompt: int = typer.Option(4, help="Samples per prompt (GenEval: 4)."),
    seed: int = typer.Option(0, help="Sample k of prompt i draws noise seed seed * 1000003 + i + k * 2**32."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the pipeline's; a student's most)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    height: Optional[int] = typer.Option(None, help="Image height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, help="euler or heun (flow ODE); fewstep for a distilled student "
                                          "(its default)."),
    steps_mode: str = typer.Option("uniform", help="uniform or hsa (heterogeneous per-token steps)."),
    runtime: Optional[float] = typer.Option(None, help="For --steps-mode hsa: fraction of the token compute."),
    kv: Optional[str] = typer.Option(None, help="For --steps-mode hsa: auto, extrapolate, refresh or stale."),
    search: Optional[str] = typer.Option(None, help="Search strategy per sample: bon, sop, smc, epf, svdd, rbf, "
                                         "beam."),
    reward: str = typer.Option("shapes", help="Reward for --search."),
    nfe: Optional[int] = typer.Option(None, help="NFE budget per sample for --search (default: 4 x steps x 2)."),
    fused_kernels: bool = typer.Option(False, "--fused-kernels", help="Fused Triton kernels (CUDA)."),
    batch_size: int = typer.Option(1, help="Prompts per pipeline call (each with --images-per-prompt samples)."),
    detector: Optional[str] = typer.Option(None, help="shapes (exact; the default for a shapes model), "
                                           "mask2former, owlv2, or none (generate only)."),
    detector_model: Optional[Path] = typer.Option(None, help="The Mask2Former / OWLv2 transformers folder."),
    clip_model: Optional[Path] = typer.Option(None, help="CLIP folder for GenEval's colour classification "
                                              "(GenEval: ViT-L/14, openai/clip-vit-large-patch14)."),
    threshold: float = typer.Option(0.3, help="Detection confidence to keep (GenEval: 0.3)."),
    counting_threshold: float = typer.Option(0.9, help="... for counting prompts (GenEval: 0.9)."),
    max_objects: int = typer.Option(16, help="Most detections kept per class (GenEval: 16)."),
    max_overlap: float = typer.Option(1.0, help="Drop a detection overlapping a more confident one of its class "
                                      "by this IoU (GenEval: 1, off)."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Write each prompt's grid.png (GenEval's script "
                              "does by default)."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """GenEval: generate its folder layout with any accel option and score it with GenEval's rules (per-tag
    accuracy, overall = the tags' mean). Under torchrun / accelerate launch the prompts are shared out over the
    processes; a killed run resumes with the same command."""
    from accel.evals.geneval import GenEvalRun, Thresholds, evaluate_geneval, load_metadata, summary_text
    from accel.evals.shard import Shard

    if score_only:
        return _score_only(out, metadata, detector, detector_model, clip_model,
                           Thresholds(threshold, counting_threshold, max_objects, max_overlap), device, overwrite,
                           allow_dirty)
    with user_errors():
        if metadata is None:
            raise UsageError("pass --metadata (GenEval's evaluation_metadata.jsonl), or --score-only")
        if images_per_prompt < 1:
            raise UsageError(f"--images-per-prompt must be >= 1, got {images_per_prompt}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
        if steps is not None and steps < 1:
            raise UsageError(f"--steps must be >= 1, got {steps}")
        if steps_mode not in ("uniform", "hsa"):
            raise UsageError(f"--steps-mode must be uniform or hsa, got {steps_mode!r}")
        if (runtime is not None or kv is not None) and steps_mode != "hsa":
            raise UsageError("--runtime and --kv apply to --steps-mode hsa only")
        if steps_mode == "hsa" and search is not None:
            raise UsageError("--steps-mode hsa does not combine with --search")
        if search is not None:
            from accel.search import get_config

            get_config(search)
        from accel.config import AccelConfig

        if sampler is not None:
            AccelConfig(sampler=sampler)
        metas = load_metadata(metadata)
        run = GenEvalRun(images_per_prompt, seed, batch_size, grid,
                         Thresholds(threshold, counting_threshold, max_objects, max_overlap))
        shard = Shard.from_env()
        import torch

        if device is None and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()}" if shard.world > 1 else "cuda"
        device = device or "cpu"
        scorer = _load_scorer(detector, detector_model, clip_model, metas, model, device)
        state = record_state(out, allow_dirty)
        pipe = _load(model, device)
        if scorer[0] is None and detector is None and type(pipe).__name__ != "ShapesPipeline":
            raise UsageError("pass --detector mask2former or owlv2 with --detector-model (and --clip-model for "
                             "colour prompts), or --detector none to generate only")
        if scorer[0] is None and detector is None:
            from accel.evals.detectors import ShapesDetector

            scorer = (ShapesDetector(), None)
        from accel.api import accelerate_pipeline
        from accel.schedulers.fewstep import find_student

        student = find_student(pipe)
        if student is not None and sampler not in (None, "fewstep"):
            raise UsageError(f"{model} is a distilled student: it samples with --sampler fewstep only")
        if student is None and sampler == "fewstep":
            raise UsageError(f"--sampler fewstep needs a distilled student; {model} is not one")
        apipe = accelerate_pipeline(pipe, AccelConfig(sampler=sampler or ("fewstep" if student else "euler"),
                                                      fused_kernels=fused_kernels))
        call = accel_call_options(apipe, student, steps, guidance, height, width, steps_mode, runtime, kv, search,
                                  reward, nfe)
        settings = {"model": model, "sampler": sampler, "fused_kernels": fused_kernels,
                    "detector_model": None if detector_model is None else str(detector_model.resolve()),
                    "clip_model": None if clip_model is None else str(clip_model.resolve())}
        with _eval_bar(disable=not shard.main) as progress, saving(out):
            summary = evaluate_geneval(apipe, metas, out, run, call, detector=scorer[0], colors=scorer[1],
                                       settings=settings, overwrite=overwrite, shard=shard,
                                       progress=_eval_progress(progress), state=state)
        if summary is None:
            return
    if "per_tag" in summary:
        Console().print(summary_text(summary), highlight=False)
        console.print(f"wrote {out / 'results.jsonl'} and {out / 'summary.json'}; {summary['nfe']} NFE, "
                      f"{summary['seconds']:.1f} s", highlight=False)
    else:
        console.print(f"wrote {len(metas)} prompts' samples to {out} (not scored: --detector none); "
                      f"{summary['nfe']} NFE", highlight=False)


def _load_scorer(detector: Optional[str], detector_model: Optional[Path], clip_model: Optional[Path], metas,
                 model: str, device: str):
    """(detector, colour classifier) from the options; (None, None) when nothing scores or the default applies."""
    import diffusers
    import transformers

    from accel.evals.detectors import DETECTORS, ClipColors, load_detector

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()
    if detector == "none":
        if detector_model is not None or clip_model is not None:
            raise UsageError("--detector none scores nothing: drop --detector-model / --clip-model")
        return None, None
    if detector is None:
        if detector_model is not None:
            raise UsageError("--detector-model needs --detector mask2former or owlv2")
        return None, None
    if detector not in DETECTORS:
        raise UsageError(f"unknown --detector {detector!r}; allowed: {', '.join(DETECTORS)}, none")
    colored = detector != "shapes" and any("color" in c for m in metas for c in m["include"])
    if colored and clip_model is None:
        raise UsageError("the metadata has colour prompts: pass --clip-model (GenEval's CLIP colour classifier)")
    try:
        return load_detector(detector, detector_model, device), ClipColors(clip_model, device) if colored else None
    except (ValueError, UsageError):
        raise
    except Exception as e:  # a folder that passes the checks but does not load: which one, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load the {detector} detector or the CLIP colour classifier: {first}") from None


def _score_only(out: Path, metadata: Optional[Path], detector: Optional[str], detector_model: Optional[Path],
                clip_model: Optional[Path], thresholds, device: Optional[str], overwrite: bool,
                allow_dirty: bool) -> None:
    """`--score-only`: GenEval's results.jsonl and summary for the layout in `out`, whoever made it."""
    import json

    from accel.cli.main import check_outputs
    from accel.evals.geneval import read_layout, score_folder, summarize, summary_text
    from accel.evals.io import run_info, write_atomic, write_json
    from accel.evals.shard import Shard

    with user_errors():
        if metadata is not None:
            raise UsageError("--score-only reads each prompt's metadata.jsonl in --out: drop --metadata")
        if detector in (None, "none"):
            raise UsageError("--score-only needs --detector (shapes, mask2former or owlv2)")
        layout = read_layout(out)
        check_outputs([out / "results.jsonl", out / "summary.json"], overwrite)
        shard = Shard.from_env()
        import torch

        if device is None and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()}" if shard.world > 1 else "cuda"
        det, colors = _load_scorer(detector, detector_model, clip_model, [m for m, _ in layout], "", device or "cpu")
        state = record_state(out, allow_dirty)
        with _eval_bar(disable=not shard.main) as progress, saving(out):
            rows = score_folder(out, det, colors, thresholds, shard, _eval_progress(progress))
        if rows is None:
            return
        summary = summarize(rows)
        with saving(out / "results.jsonl"):
            write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
            write_json(out / "summary.json", summary | {"detector": detector, "score_only": True,
                                                        "thresholds": vars(thresholds)} | run_info(state))
    Console().print(summary_text(summary), highlight=False)
    console.print(f"wrote {out / 'results.jsonl'} and {out / 'summary.json'}", highlight=False)
