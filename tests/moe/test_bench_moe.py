"""`accel bench moe` end to end on tiny random models (a MoE shapes model and a dense one): the rows issue #19 asks
for, with the expert work each capacity option spent. Accuracy numbers of random models mean nothing; the rows'
shape, the FLOPs accounting and the errors are what is checked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.moe import parse_schedule
from accel.pipelines.shapes import build_shapes_pipeline
from accel.pipelines.shapes_moe import build_shapes_moe_pipeline

TINY = dict(width=32, stem_channels=(8, 16), text_hidden=32, text_layers=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_shapes_moe_pipeline(**TINY, num_layers=3, num_experts=4, moe_intermediate_dim=16,
                              capacity_factors=(0.0, 2.0, 1.0)).save_pretrained(root / "moe")
    build_shapes_pipeline(**TINY, num_layers=2).save_pretrained(root / "dense")
    return root


def test_rows(folders, tmp_path):
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, [
        "bench", "moe", "--models", f"moe={folders / 'moe'},dense={folders / 'dense'}", "--prompts", "2",
        "--steps", "2", "--capacities", "0.5,1", "--schedule", "auto", "--schedule", "late=0.5:1,0:0.25",
        "--json", str(out), "--allow-dirty"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["model"], r["capacity"], r["method"]) for r in rows] == [
        ("moe", 0.5, "constant"), ("moe", 1.0, "constant"), ("moe", "auto", "auto"), ("moe", "late", "late"),
        ("dense", None, "dense")]
    for r in rows:
        assert {"accuracy", "seconds", "expert_flops_fraction", "git_sha", "command", "torch", "machine"} <= r.keys()
        assert 0 <= r["accuracy"] <= 1 and r["nfe"] == 2 * 2 * 2  # 2 prompts, 2 steps, CFG
        assert len(r["correct"]) == 2 and r["accuracy_images"] == sum(r["correct"]) / 2
        assert r["accuracy"] == pytest.approx(sum(r["per_tag"].values()) / len(r["per_tag"]))
    by = {r["capacity"]: r for r in rows}
    assert by[1.0]["routed_flops_fraction"] == 1.0 and by[0.5]["routed_flops_fraction"] < 1
    assert by[None]["expert_flops_fraction"] is None
    assert 0 <= by[0.5]["dropped_token_fraction"] <= 1
    assert len(by[0.5]["dropped_by_sigma"]) == 2 and by[None]["dropped_by_sigma"] is None  # one per step
    # Active feed-forward compute per token: the dense model's two GELU MLPs (32 -> 128 -> 32) exactly; the MoE
    # model's dense block, routers (64 -> 4) and shared experts, plus its routed experts (3 x 32 x 16 MACs each) at
    # 2 and 1 experts per token (the trained capacities; ceil rounding adds a little), fewer at half capacity.
    assert by[None]["ffn_macs_per_token"] == 2 * 2 * 32 * 128
    fixed = 2 * 32 * 128 + 2 * (64 * 4 + 3 * 32 * 16)
    assert by[1.0]["ffn_macs_per_token"] == pytest.approx(fixed + 3 * 32 * 16 * 3, rel=0.05)
    assert fixed < by[0.5]["ffn_macs_per_token"] < by[1.0]["ffn_macs_per_token"]


def test_bad_input(folders):
    runner = CliRunner()
    for args, message in ((["--capacities", "0,1"], "--capacities > 0"), (["--schedule", "late"], "a schedule is"),
                          (["--models", "moe=/nonexistent"], "no folder")):
        result = runner.invoke(app, ["bench", "moe", "--models", f"moe={folders / 'moe'}", *args])
        assert result.exit_code != 0 and message in result.output, result.output
    with pytest.raises(ValueError, match="descending"):
        parse_schedule("x=0:1,0.5:0.5")
    name, schedule = parse_schedule("late=0.5:1,0:0.25")
    assert name == "late" and schedule(0.9) == 1 and schedule(0.2) == 0.25
