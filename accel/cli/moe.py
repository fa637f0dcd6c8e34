"""`accel bench moe`: accuracy, wall time and expert FLOPs of MoE shapes models against capacity (accel.evals.moe).

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from accel.cli.main import (ALLOW_DIRTY, OVERWRITE, UsageError, _load, _progress, bench_app, check_outputs, record_rows,
                            record_state, user_errors)

MOE_MODEL = "shapes-moe"  # the built-in MoE model (assets/shapes-moe-t2i, trained by scripts/train_shapes_moe.py)


def _models(spec: str) -> dict[str, str]:
    """label -> folder from `label=folder,...` (a bare folder is labelled by its name)."""
    models = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        label, sep, folder = part.partition("=")
        if not sep:
            label, folder = Path(part).name, part
        if not label or not folder or label in models:
            raise UsageError(f"--models takes label=folder pairs with distinct labels, got {spec!r}")
        models[label] = folder
    if not models:
        raise UsageError("--models needs at least one folder")
    return models


@bench_app.command("moe")
def bench_moe_cmd(
    models: str = typer.Option(f"moe={MOE_MODEL}", help="Comma-separated label=folder pairs: MoE shapes models "
                               "(scripts/train_shapes_moe.py; its --coactivation 1 and --router-input modulated "
                               "runs are the ablations) and dense ShapesPipeline folders; built-in names (shapes, "
                               "shapes-moe) work as folders."),
    prompts: int = typer.Option(24, help="Number of prompts (the six tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    steps: int = typer.Option(25, help="Sampling steps (with the model's CFG)."),
    capacities: str = typer.Option("0.25,0.5,0.75,1,1.5,2", help="Comma-separated constant factors on the trained "
                                   "capacities."),
    schedule: Optional[List[str]] = typer.Option(None, help="A per-step schedule: auto, or name=sigma:factor,... "
                                                 "(descending sigma thresholds, e.g. late=0.5:1,0:0.5); repeatable. "
                                                 "Default: auto."),
    repeats: int = typer.Option(1, help="Timing rounds: each runs every option once; an option's time is its best."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG plot of accuracy vs expert FLOPs (needs matplotlib)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Checker accuracy, wall time and expert FLOPs fraction of MoE models at constant capacity factors and per-step
    schedules, and of dense models, on one seeded prompt set."""
    from accel.evals.moe import bench_moe, parse_schedule, plot_moe
    from accel.models import BUILTIN

    with user_errors():
        try:
            factors = tuple(float(v) for v in capacities.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--capacities must be comma-separated numbers, got {capacities!r}") from None
        schedules = tuple(schedule or ("auto",))
        for s in schedules:
            parse_schedule(s)
        if prompts < 1 or steps < 1 or repeats < 1 or any(f <= 0 for f in factors):
            raise UsageError(f"--prompts, --steps and --repeats must be >= 1 and --capacities > 0, got {prompts}, "
                             f"{steps}, {repeats} and {capacities}")
        folders = _models(models)
        for label, folder in folders.items():
            if folder not in BUILTIN and not Path(folder).is_dir():
                raise UsageError(f"model {label}: no folder {folder} (built-in models: {', '.join(BUILTIN)})")
        check_outputs([json_out, plot], overwrite)
        state = record_state(json_out, allow_dirty)
        loaded = {label: _load(folder, None) for label, folder in folders.items()}
        for label, pipe in loaded.items():
            if type(pipe).__name__ != "ShapesPipeline":
                raise UsageError(f"bench moe needs ShapesPipeline folders, {label} is a {type(pipe).__name__}")
        with _progress() as progress:
            task = progress.add_task("options", total=None)
            rows = bench_moe(loaded, prompts=prompts, seed=seed, steps=steps, capacities=factors,
                             schedules=schedules, repeats=repeats, progress=lambda row: progress.advance(task))
        rows = record_rows(rows, state, json_out, plot, plot_moe)
    table = Table(title=f"moe: {prompts} prompts, seed {seed}, {steps} steps")
    for col in ("model", "capacity", "method", "accuracy", "expert flops", "dropped tokens", "seconds"):
        table.add_column(col)
    for r in rows:
        flops = r["expert_flops_fraction"]
        dropped = r["dropped_token_fraction"]
        table.add_row(r["model"], "" if r["capacity"] is None else str(r["capacity"]), r["method"],
                      f"{r['accuracy']:.3f}", "" if flops is None else f"{flops:.2f}",
                      "" if dropped is None else f"{dropped:.2f}", f"{r['seconds']:.1f}")
    Console().print(table)
