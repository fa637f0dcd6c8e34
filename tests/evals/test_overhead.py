"""`accel bench overhead` (accel.evals.overhead): rows recorded on a tiny family, rendered by `accel report`; bad
input refused in one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.overhead import FAMILIES, families
from accel.evals.report import kind_of

runner = CliRunner()


def test_the_family_names_are_the_builders():
    assert tuple(families()) == FAMILIES


def test_cli_records_one_family_and_report_renders_it(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["bench", "overhead", "--families", "flux", "--prompts", "1", "--repeats", "1", "--steps", "2",
            "--threads", str(torch.get_num_threads()), "--json", str(out), "--allow-dirty"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["family"] for row in rows] == ["flux"] and kind_of(rows) == "overhead"
    row = rows[0]
    # The wrapper took its own path and made the pipeline's output exactly, with one forward a step (embedded
    # guidance).
    assert row["pipeline_class"] == "FluxPipeline" and row["path"] == "accel" and row["max_abs_diff"] == 0
    assert row["nfe_per_call"] == 2 and row["steps"] == 2 and (row["prompts"], row["repeats"]) == (1, 1)
    # One repeat: one paired ratio, no spread; the overhead is the wrapped call's ms less the pipeline's.
    assert row["ratio"] == row["ratio_min"] == row["ratio_max"] and row["ratio_spread"] is None
    assert row["overhead_ms"] == pytest.approx(row["accel_ms"] - row["pipeline_ms"])
    assert row["ratio"] == pytest.approx(row["accel_ms"] / row["pipeline_ms"])
    assert row["git_sha"] and row["command"].startswith("accel") and "flux" in r.output

    md = tmp_path / "report.md"
    r = runner.invoke(app, ["report", str(out), "--out", str(md), "--no-plots"])
    assert r.exit_code == 0, r.output
    text = md.read_text()
    assert "## overhead" in text and "| flux | FluxPipeline | accel | 2 |" in text

    r = runner.invoke(app, args)  # the file exists now
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output


@pytest.mark.parametrize("args, message", [
    (["--families", "flux,nope"], "unknown families nope; allowed: flux, flux-kontext"),
    (["--families", ","], "unknown families (none given)"),
    (["--repeats", "0"], "must be >= 1"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    r = runner.invoke(app, ["bench", "overhead", *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
