"""`accel report`: markdown tables and plots from recorded results files.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from accel.cli.main import OVERWRITE, app, console, saving, user_errors


@app.command("report")
def report_cmd(
    files: List[Path] = typer.Argument(..., help="Results files of `accel eval` / `accel bench` / the benchmark "
                                       "scripts (JSON rows)."),
    out: Path = typer.Option(Path("report.md"), help="The markdown file to write; plots go next to it as "
                             "<stem>-<kind>.png."),
    plots: bool = typer.Option(True, help="Draw each kind's plot (needs matplotlib)."),
    overwrite: bool = OVERWRITE,
):
    """Render recorded rows into markdown tables (one per kind of rows, over all its files) and PNG plots, with the
    machine, versions, git sha and command that made each row."""
    from accel.evals.report import report

    with user_errors(), saving(out):
        written = report([str(f) for f in files], out, plots=plots, overwrite=overwrite)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
