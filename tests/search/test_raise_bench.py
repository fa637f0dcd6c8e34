"""`accel bench search` with another reward than the judge, and RAISE rows: fields, the reward-hacking gap, bad
input. The gap is checked on the built-in model (a random one is never correct, so its gap is always 0)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.rewards import ShapesReward, ShapesVerifier, VerifierReward
from accel.search.bench import bench_reward, bench_search


def test_rows_with_raise_and_a_learned_reward(tiny_pipe):
    torch.manual_seed(0)
    reward = VerifierReward(ShapesVerifier().eval())  # untrained: a poor but valid learned reward
    rows = bench_search(tiny_pipe, prompts=2, seed=0, strategies=("bon", "raise:population=2:originals=1:edits=1"),
                        budgets=(2, 4), steps=2, reward=reward, reward_name="shapes-verifier")
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("bon", 2), ("bon", 4), ("raise:population=2:originals=1:edits=1", 2),
        ("raise:population=2:originals=1:edits=1", 4)]
    for r in rows:
        assert r["reward"] == "shapes-verifier" and 0 < r["nfe"] <= r["budget_nfe"]
        assert 0.0 <= r["accuracy"] <= r["oracle_accuracy"] <= 1.0
        assert r["hacking_gap"] == pytest.approx(r["oracle_accuracy"] - r["accuracy"])
        assert 0.0 <= r["mean_reward"] <= 1.0
    bon, raise_ = rows[:2], rows[2:]
    assert [r["reward_calls"] for r in bon] == [2, 4] and all(r["verifier_calls"] == 0 for r in bon)
    # RAISE: one verifier call per round (one round at 2x, two at 4x), analyzer + rewriter per round.
    assert [r["verifier_calls"] for r in raise_] == [1, 2] and [r["agent_calls"] for r in raise_] == [2, 4]
    assert [r["rounds"] for r in raise_] == [1, 2] and all(r["rounds"] == 0 for r in bon)
    # Per-prompt records add up to the row, and RAISE's say why each prompt stopped and what it returned.
    for r in rows:
        assert [p["tag"] for p in r["per_prompt"]] == [p["tag"] for p in rows[0]["per_prompt"]]
        assert sum(p["nfe"] for p in r["per_prompt"]) / 2 == r["nfe"]
    assert all("stop" not in p for p in bon[0]["per_prompt"])
    for p in raise_[1]["per_prompt"]:
        assert p["stop"] in ("rounds", "verified", "budget", "analyzer") and 1 <= p["best_round"] <= p["rounds"]
        assert p["best_kind"] in ("resample", "rewrite", "edit")


def test_raise_budget_below_one_round(tiny_pipe):
    with pytest.raises(ValueError, match="at least one round"):
        bench_search(tiny_pipe, prompts=1, strategies=("raise",), budgets=(4, 8), steps=2)
    with pytest.raises(ValueError, match="give budgets >= 2, or a population of at most the smallest budget"):
        bench_search(tiny_pipe, prompts=1, strategies=("raise:population=2",), budgets=(1, 4), steps=2)


class AntiReward(ShapesReward):
    """Prefers what the checker rejects: the worst possible selector."""

    def score(self, samples, prompts):
        return 1 - super().score(samples, prompts)


def test_hacking_gap_on_the_builtin_model():
    from accel.models import load_pipeline

    pipe = load_pipeline("shapes")
    kw = dict(prompts=6, seed=5, strategies=("bon",), budgets=(3,), steps=8)
    exact = bench_search(pipe, reward=ShapesReward(strict=False), reward_name="exact-lenient", **kw)[0]
    anti = bench_search(pipe, reward=AntiReward(strict=False), reward_name="anti", **kw)[0]
    # Same samples (same seeds), different pick: the checker's own pick is the same; the exact lenient reward is
    # that pick (no gap), the anti-reward loses whatever a correct sample could have given.
    assert anti["oracle_accuracy"] == exact["oracle_accuracy"] > 0
    assert exact["hacking_gap"] == 0 and exact["accuracy"] == exact["oracle_accuracy"]
    assert anti["hacking_gap"] > 0 and anti["accuracy"] < exact["accuracy"]


def test_bench_rewards(tmp_path):
    assert isinstance(bench_reward("exact")[0], ShapesReward) and bench_reward("exact")[0].strict
    assert not bench_reward("exact-lenient")[0].strict
    ShapesVerifier().save_pretrained(tmp_path / "v")
    reward, verifier = bench_reward("shapes-verifier:prompt", str(tmp_path / "v"))
    assert reward.mode == "prompt" and isinstance(verifier, ShapesVerifier)
    with pytest.raises(ValueError, match="unknown benchmark reward"):
        bench_reward("bogus")
    with pytest.raises(FileNotFoundError, match="train_verifier.py"):
        bench_reward("shapes-verifier", str(tmp_path / "missing"))


def test_cli_bench_search_reward(tmp_path):
    from accel.pipelines.shapes import build_shapes_pipeline

    model = tmp_path / "m"
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    p.save_pretrained(model)
    ShapesVerifier().save_pretrained(tmp_path / "v")
    out = tmp_path / "rows.json"
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "search", "--model", str(model), "--prompts", "1", "--strategies",
                            "bon,raise:population=2:originals=1:edits=1", "--budgets", "2", "--steps", "2",
                            "--reward", "shapes-verifier", "--verifier", str(tmp_path / "v"), "--json", str(out),
                            "--allow-dirty"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {row["reward"] for row in rows} == {"shapes-verifier"}
    assert [row["verifier_calls"] for row in rows] == [0, 1] and "hacking_gap" in rows[0]
    r = runner.invoke(app, ["bench", "search", "--model", str(model), "--reward", "shapes-verifier", "--verifier",
                            str(tmp_path / "none")])
    assert r.exit_code == 2 and "train_verifier.py" in r.output
