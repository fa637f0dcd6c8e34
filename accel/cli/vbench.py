"""`accel eval vbench`: VBench's prompt suite, file naming and scores for a video pipeline, with accel's options.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from accel.cli.main import UsageError, _load, _progress, console, eval_app, record_state, saving, user_errors


@eval_app.command("vbench")
def eval_vbench(
    dimensions: str = typer.Option(..., help="Comma-separated VBench dimensions (subject_consistency, "
                                   "background_consistency, temporal_flickering, ...)."),
    out: Path = typer.Option(..., help="Output folder: videos/<prompt>-<k>.mp4, run.json, results.json."),
    model: str = typer.Option("shapes-video", help="A video pipeline: built-in name, diffusers folder, or hub id."),
    info: Optional[Path] = typer.Option(None, help="VBench's info file (VBench_full_info.json format); default: "
                                        "the installed vbench package's."),
    samples: int = typer.Option(5, help="Videos per prompt (VBench: 5)."),
    seed: int = typer.Option(0, help="Base seed: video k of prompt p uses sha256(f'{seed}|{k}|{p}')."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default 25; a student's most)."),
    sampler: Optional[str] = typer.Option(None, help="euler, heun, or fewstep (a distilled student)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    height: Optional[int] = typer.Option(None, help="Frame height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Frame width (default: the model's)."),
    num_frames: Optional[int] = typer.Option(None, help="Frames per video (default: the model's)."),
    steps_mode: str = typer.Option("uniform", help="uniform or hsa (heterogeneous per-token steps)."),
    runtime: Optional[float] = typer.Option(None, help="For --steps-mode hsa: fraction of the token compute."),
    kv: Optional[str] = typer.Option(None, help="For --steps-mode hsa: auto, extrapolate, refresh or stale."),
    fused_kernels: bool = typer.Option(False, "--fused-kernels", help="Fused Triton kernels (CUDA)."),
    fps: int = typer.Option(8, help="Frame rate of the written mp4 files (VBench's sampling script: 8)."),
    batch_size: int = typer.Option(5, help="Videos per pipeline call."),
    scorer: str = typer.Option("auto", help="auto (the vbench package where its weights are local, else native), "
                               "native, or vbench."),
    weights: Optional[Path] = typer.Option(None, help="Folder holding any of dino-vitb16/, clip-vit-base-patch32/, "
                                           "clip-vit-large-patch14/ (transformers, safetensors) and "
                                           "sa_0_4_vit_l_14_linear.safetensors, for the native scores."),
    dino: Optional[Path] = typer.Option(None, help="DINO ViT-B/16 folder (subject_consistency)."),
    clip: Optional[Path] = typer.Option(None, help="CLIP ViT-B/32 folder (background_consistency; with its "
                                        "tokenizer, appearance_style)."),
    clip_large: Optional[Path] = typer.Option(None, help="CLIP ViT-L/14 folder (aesthetic_quality)."),
    aesthetic_head: Optional[Path] = typer.Option(None, help="LAION's aesthetic head as safetensors "
                                                  "(aesthetic_quality)."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results.json; first discard the videos if "
                                   "they were made with other settings, or with none recorded (no run.json)."),
    allow_dirty: bool = typer.Option(False, "--allow-dirty", help="Record results from a checkout with uncommitted "
                                     "changes (marked dirty, with a hash of the diff)."),
):
    """VBench dimensions and Quality / Semantic / Total of a video model, with any accel option. Under torchrun /
    accelerate launch the videos are shared out over the processes; a killed run resumes with the same command."""
    from accel.evals.vbench import ScoringWeights, VideoSettings, evaluate_vbench, read_suite

    with user_errors():
        dims, info, _, _ = read_suite(dimensions, info)  # before the model loads: a bad file fails at once
        if samples < 1:
            raise UsageError(f"--samples must be >= 1, got {samples}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
        settings = VideoSettings(model=model, seed=seed, steps=steps, sampler=sampler, guidance_scale=guidance,
                                 height=height, width=width, num_frames=num_frames, steps_mode=steps_mode,
                                 runtime=runtime, kv=kv, fused_kernels=fused_kernels, fps=fps)
        scoring = ScoringWeights.find(weights, dino=dino, clip=clip, clip_large=clip_large,
                                      aesthetic_head=aesthetic_head)
        state = record_state(out, allow_dirty)
        import torch

        from accel.evals.shard import Shard

        shard = Shard.from_env()  # torchrun / accelerate launch: the videos are shared out, the main one scores
        if device is None and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()}" if shard.world > 1 else "cuda"
        device = device or "cpu"
        pipe = _load(model, device)
        with _progress(disable=not shard.main) as progress, saving(out):
            tasks = {}

            def advance(stage: str, total: int, n: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.advance(tasks[stage], n)

            result = evaluate_vbench(settings, dims, out, info=info, samples=samples, weights=scoring, scorer=scorer,
                                     batch_size=batch_size, device=device, overwrite=overwrite, pipe=pipe,
                                     progress=advance, state=state, shard=shard)
    if result is not None:
        _print(result)


def _print(result: dict) -> None:
    table = Table(title=f"VBench: {result['model']}, {result['samples']} samples per prompt "
                        f"({result['videos_generated']} videos made, {result['videos_reused']} reused)")
    for col in ("dimension", "score", "normalized", "method"):
        table.add_column(col)
    normalized = result["aggregate"]["normalized"]
    for name, r in result["dimensions"].items():
        score = "-" if r["score"] is None else f"{r['score']:.4f}"
        norm = f"{normalized[name]:.4f}" if name in normalized else "-"
        table.add_row(name, score, norm, r["method"] if r["score"] is not None else f"skipped: {r['how']}")
    agg = result["aggregate"]
    label = " (partial)" if agg["partial"] else ""
    for key in ("quality", "semantic", "total"):
        value = "-" if agg[key] is None else f"{agg[key]:.4f}"
        table.add_row(f"{key}{label}", value, "", "", style="bold")
    Console().print(table)
    console.print(f"wrote {Path(result['out']) / 'results.json'}", highlight=False)
