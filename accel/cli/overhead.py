"""`accel bench overhead`: the wrapper's cost at the default path, per pipeline family (accel.evals.overhead).

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from accel.cli.main import (ALLOW_DIRTY, OVERWRITE, UsageError, _progress, bench_app, check_outputs, quiet_loaders,
                            record_rows, record_state, user_errors)


@bench_app.command("overhead")
def bench_overhead_cmd(
    families: Optional[str] = typer.Option(None, help="Comma-separated families (default: all): a tiny seeded "
                                           "pipeline of each adapted family (flux, ..., wan2.2, hunyuanvideo15) and "
                                           "the built-in shapes, shapes-video; an unknown name gets the list."),
    prompts: int = typer.Option(4, help="Prompts per family (the shapes prompt set)."),
    seed: int = typer.Option(0, help="Picks the prompts and seeds every call's generator."),
    repeats: int = typer.Option(5, help="Timed passes over the prompts (the two calls interleaved per prompt)."),
    steps: int = typer.Option(4, help="num_inference_steps of every call."),
    threads: int = typer.Option(1, help="torch CPU threads."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Each family's pipeline call against the same call through accelerate_pipeline (default path): paired time
    ratios (median, spread), the overhead in ms per call, and the outputs' largest difference (0 expected)."""
    from accel.evals.overhead import FAMILIES, bench_overhead, check_families

    with user_errors():
        names = tuple(f.strip() for f in families.split(",") if f.strip()) if families is not None else FAMILIES
        check_families(list(names))
        if prompts < 1 or repeats < 1 or steps < 1 or threads < 1:
            raise UsageError(f"--prompts, --repeats, --steps and --threads must be >= 1, got {prompts}, {repeats}, "
                             f"{steps} and {threads}")
        check_outputs([json_out], overwrite)
        state = record_state(json_out, allow_dirty)
        import torch

        torch.set_num_threads(threads)
        quiet_loaders()  # also the tiny tokenizers' truncation warnings
        with _progress() as progress:
            task = progress.add_task("families", total=len(names))
            rows = bench_overhead(names, prompts=prompts, seed=seed, steps=steps, repeats=repeats,
                                  progress=lambda row: progress.advance(task))
        rows = record_rows(rows, state, json_out, extra={"threads": threads})
    table = Table(title=f"wrapper overhead: {prompts} prompts, seed {seed}, {steps} steps, {repeats} repeats "
                        "interleaved")
    for col in ("family", "path", "pipeline ms/call", "overhead ms/call", "ratio (spread)", "max abs diff"):
        table.add_column(col)
    for r in rows:
        spread = "-" if r["ratio_spread"] is None else f"{r['ratio_spread']:.0%}"
        table.add_row(r["family"], r["path"], f"{r['pipeline_ms']:.1f}", f"{r['overhead_ms']:+.2f}",
                      f"{r['ratio']:.3f} ({spread})", f"{r['max_abs_diff']:.1e}")
    Console().print(table)
