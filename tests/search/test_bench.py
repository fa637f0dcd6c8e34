"""The search benchmark's rows on a tiny random model (the recorded benchmark runs the built-in one)."""

import importlib.util

import pytest

from accel.search.bench import bench_search, plot_search


def test_bench_rows(tiny_pipe, tmp_path):
    rows = bench_search(tiny_pipe, prompts=2, seed=0, strategies=("bon", "rbf"), budgets=(1, 2), steps=2)
    assert [(r["strategy"], r["budget"]) for r in rows] == [("bon", 1), ("bon", 2), ("rbf", 1), ("rbf", 2)]
    for r in rows:
        assert r["plain_nfe"] == 4 and r["budget_nfe"] == 4 * r["budget"]
        assert 0 < r["nfe"] <= r["budget_nfe"]
        assert 0.0 <= r["accuracy_strict"] <= r["accuracy"] <= 1.0 and r["prompts"] == 2
    with pytest.raises(ValueError, match="budgets"):
        bench_search(tiny_pipe, prompts=1, budgets=(0.5,))
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.warns(UserWarning, match="matplotlib is not installed"):
            assert plot_search(rows, str(tmp_path / "plot.png")) is False
    else:
        assert plot_search(rows, str(tmp_path / "plot.png")) and (tmp_path / "plot.png").stat().st_size > 0
