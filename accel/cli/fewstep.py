"""`accel bench fewstep`: distilled few-step students against their teacher on a built-in model.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from accel.cli.main import (ALLOW_DIRTY, OVERWRITE, UsageError, _load, _progress, bench_app, check_outputs, record_rows,
                            record_state, user_errors)


def student_labels(names: list[str]) -> list[str]:
    """A label per student folder: its name, or as many of its last path parts as tell it from the others (two
    runs' snapshots/step-500 become image-dmd/snapshots/step-500 and image-sc-dmd/snapshots/step-500)."""
    parts = [Path(n).parts for n in names]
    labels = []
    for p in parts:
        k = next((k for k in range(1, len(p)) if sum(q[-k:] == p[-k:] for q in parts) == 1), len(p))
        labels.append("/".join(p[-k:]))
    return labels


@bench_app.command("fewstep")
def bench_fewstep_cmd(
    model: str = typer.Option("image", help="The teacher: image or video (the built-in models), or a "
                              "ShapesPipeline / ShapesVideoPipeline folder."),
    students: Optional[str] = typer.Option(None, help="Comma-separated student folders (as `accel distill` "
                                           "writes them) or built-in student names; default: the teacher's built-in "
                                           "students."),
    prompts: int = typer.Option(24, help="Number of prompts (the tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    steps: int = typer.Option(25, help="The teacher's full steps (with CFG) every method is compared with."),
    euler_steps: str = typer.Option("2,4,8", help="Comma-separated teacher Euler step counts to compare."),
    repeats: int = typer.Option(1, help="Timing rounds: each runs every method once; a method's time is its best."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG plot of accuracy vs NFE (needs matplotlib)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Checker accuracy, PSNR / SSIM against the teacher's samples, NFE and wall time of few-step students, the
    teacher at its full steps and at fewer Euler steps; students also report their semigroup defect."""
    from accel.distill.roles import fingerprint
    from accel.evals.fewstep import bench_fewstep, plot_fewstep
    from accel.models import builtin_students

    with user_errors():
        try:
            euler = tuple(int(v) for v in euler_steps.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--euler-steps must be comma-separated integers, got {euler_steps!r}") from None
        if prompts < 1 or steps < 2 or repeats < 1 or any(n < 1 for n in euler):
            raise UsageError(f"--prompts, --repeats and --euler-steps must be >= 1 and --steps >= 2, got {prompts}, "
                             f"{repeats}, {euler_steps} and {steps}")
        teacher_name = {"image": "shapes", "video": "shapes-video"}.get(model, model)
        names = [s.strip() for s in students.split(",") if s.strip()] if students else builtin_students(teacher_name)
        if not names:
            raise UsageError(f"no students of {model}: pass --students with folders that `accel distill` wrote")
        check_outputs([json_out, plot], overwrite)
        state = record_state(json_out, allow_dirty)
        teacher = _load(teacher_name, None)
        if type(teacher).__name__ not in ("ShapesPipeline", "ShapesVideoPipeline"):
            raise UsageError(f"bench fewstep needs a ShapesPipeline or ShapesVideoPipeline teacher, got "
                             f"{type(teacher).__name__}")
        if len({Path(n).resolve() for n in names}) < len(names):
            raise UsageError(f"--students names a folder twice: {students}")
        paths = dict(zip(student_labels(names), names))
        loaded = {label: _load(n, None) for label, n in paths.items()}
        with _progress() as progress:
            task = progress.add_task("methods", total=None)
            rows = bench_fewstep(teacher, loaded, prompts=prompts, seed=seed, steps=steps, euler_steps=euler,
                                 repeats=repeats, progress=lambda row: progress.advance(task))
        # the folder, and what was in it: a folder's weights can change between commits (a re-shipped student)
        weights = {label: fingerprint(pipe.transformer) for label, pipe in loaded.items()}
        for r in rows:
            if r["method"] not in ("teacher", "euler"):
                label = r["label"].rsplit(":nfe=", 1)[0]
                r.update(student=paths[label], student_fingerprint=weights[label])
        rows = record_rows(rows, state, json_out, plot, plot_fewstep)
    table = Table(title=f"fewstep: {prompts} prompts, seed {seed}, teacher {steps} steps")
    for col in ("method", "nfe", "accuracy", "psnr", "ssim", "runtime", "defect"):
        table.add_column(col)
    for r in rows:
        defect = r.get("semigroup_defect")
        table.add_row(r["label"], f"{r['nfe']:.0f}", f"{r['accuracy']:.3f}", f"{r['psnr']:.1f}", f"{r['ssim']:.3f}",
                      f"{r['runtime']:.3f}", "" if defect is None else f"{defect:.4f}")
    Console().print(table)
