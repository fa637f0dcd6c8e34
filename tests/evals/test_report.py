"""`accel report`: recorded rows rendered as markdown tables, plots and provenance; bad files refused clearly."""

import json

import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.report import kind_of, render, report

RUN = {"git_sha": "abcdef1234", "dirty": False, "machine": "x86_64 Linux", "device": "cpu, 2 threads",
       "torch": "2.13.0+cpu", "diffusers": "0.42.1", "python": "3.11.7"}


def _search_rows(strategies, budgets, seed=1):
    return [RUN | {"strategy": s, "budget": float(b), "nfe": 50.0 * b, "accuracy": 0.5 + 0.01 * i * b,
                   "accuracy_strict": 0.5, "seed": seed, "command": f"accel bench search --strategies {s}"}
            for i, s in enumerate(strategies) for b in budgets]


def _write(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def test_search_parts_make_one_table_with_every_command(tmp_path):
    a = _write(tmp_path / "a.json", _search_rows(["bon", "rbf"], (1, 4)))
    b = _write(tmp_path / "b.json", _search_rows(["smc"], (1, 2, 4)))
    out = tmp_path / "r.md"
    written = report([a, b], out, plots=False)
    text = out.read_text()
    assert written == [out]
    assert "| strategy | 1x | 2x | 4x |" in text
    assert "| bon | 0.500 | - | 0.500 |" in text and "| rbf | 0.510 | - | 0.540 |" in text
    assert "| smc | 0.500 | - | 0.500 |" not in text and "| smc | 0.500 | 0.500 | 0.500 |" in text
    assert "abcdef1 (clean): `accel bench search --strategies bon`" in text
    assert "`accel bench search --strategies smc`" in text
    assert "- x86_64 Linux, cpu, 2 threads, torch 2.13.0+cpu, diffusers 0.42.1, python 3.11.7" in text


def test_kinds_are_told_apart_and_unknown_files_refused(tmp_path):
    assert kind_of(_search_rows(["bon"], (1,))) == "search"
    fewstep = RUN | {"label": "sc-dmd:4", "method": "sc-dmd", "nfe": 4, "accuracy": 0.6, "psnr": 20.0, "ssim": 0.8,
                     "runtime": 0.1, "semigroup_defect": 0.0123}
    assert kind_of([fewstep]) == "fewstep"
    steps = RUN | {"method": "full", "runtime": 1.0, "accuracy": 0.5, "psnr": 100.0, "ssim": 1.0}
    assert kind_of([steps]) == "steps"
    with pytest.raises(ValueError, match="not a results file accel knows"):
        kind_of([{"foo": 1}], "x.json")
    f = _write(tmp_path / "f.json", [fewstep | {"command": "accel bench fewstep"}])
    table = render(f"fewstep {f}")
    assert "| sc-dmd:4 | 4 | 0.600 | 20.0 | 0.800 | 0.100 | 0.0123 |" in table


def test_fewstep_tables_of_several_prompt_sets_pool_each_student_over_them():
    from accel.evals.report import fewstep_table

    def run(seed, teacher, student, folder, command=""):
        base = RUN | {"seed": seed, "nfe": 4, "psnr": 20.0, "ssim": 0.8, "runtime": 0.1, "command": command}
        return [base | {"label": "teacher", "method": "teacher", "nfe": 50, "correct": teacher,
                        "accuracy": sum(teacher) / len(teacher)},
                base | {"label": "s:nfe=4", "method": "sc-dmd", "correct": student, "accuracy": sum(student) / 2}
                | ({"student": folder} if folder else {})]

    same = fewstep_table([run(1, [1, 0], [0, 0], "runs/a/s"), run(2, [1, 1], [1, 0], "runs/a/s")])
    assert "| 1+2 | **s:nfe=4** | 4 | 0.250 | - | - | - | - | -0.500 (" in "\n".join(same)
    assert "| 1+2 | **teacher** | 50 | 0.750 |" in "\n".join(same)
    twice = fewstep_table([run(1, [1, 0], [0, 0], "runs/a/s"), run(2, [1, 1], [1, 0], "runs/a/s"),
                           run(2, [1, 1], [1, 0], "runs/c/s")])  # set 2 measured twice: its teacher counts once
    assert "| 1+2 | **teacher** | 50 | 0.750 |" in "\n".join(twice)
    other = fewstep_table([run(1, [1, 0], [0, 0], "runs/a/s"), run(2, [1, 1], [1, 0], "runs/b/s")])
    assert "**s:nfe=4**" not in "\n".join(other) and "| 2 | s:nfe=4 |" in "\n".join(other)
    # rows from before `student` was recorded: the folder the command's --students named
    old = fewstep_table([run(1, [1, 0], [0, 0], None, "accel bench fewstep --students runs/a/s,x"),
                         run(2, [1, 1], [1, 0], None, "accel bench fewstep --students runs/b/s")])
    assert "**s:nfe=4**" not in "\n".join(old)
    # rows that record the weights' fingerprint pool by it: one folder re-shipped with other weights does not pool,
    # the same weights in two folders do
    a, b = run(1, [1, 0], [0, 0], "assets/s"), run(2, [1, 1], [1, 0], "assets/s")
    a[1]["student_fingerprint"], b[1]["student_fingerprint"] = "f1", "f2"
    assert "**s:nfe=4**" not in "\n".join(fewstep_table([a, b]))
    b[1] |= {"student_fingerprint": "f1", "student": "runs/x"}
    assert "| 1+2 | **s:nfe=4** |" in "\n".join(fewstep_table([a, b]))
    # video rows with an AR student carry the seam ratio and the persistence clause: two more columns
    video = run(1, [1, 0], [0, 0], "runs/a/s")
    for row, ratio in zip(video, (1.2, 0.9)):
        row |= {"seam_ratio": ratio, "persistence": 0.5}
    lines = fewstep_table([video])
    assert lines[0].endswith("| semigroup defect | seam ratio | persistence | vs teacher (paired, 95% interval) |")
    assert "| s:nfe=4 | 4 | 0.000 | 20.0 | 0.800 | 0.100 | - | 0.90 | 0.500 |" in "\n".join(lines)


def test_plots_written_next_to_the_report_and_nothing_overwritten(tmp_path):
    pytest.importorskip("matplotlib")
    a = _write(tmp_path / "a.json", _search_rows(["bon", "rbf"], (1, 4)))
    out = tmp_path / "r.md"
    assert report([a], out) == [out, tmp_path / "r-search.png"]
    assert (tmp_path / "r-search.png").stat().st_size > 1000 and "![search](r-search.png)" in out.read_text()
    with pytest.raises(ValueError, match="exists"):
        report([a], out)
    report([a], out, overwrite=True)


def test_cli_writes_the_report_and_refuses_bad_files_in_one_line(tmp_path):
    runner = CliRunner()
    a = _write(tmp_path / "a.json", _search_rows(["bon"], (1, 2)))
    out = tmp_path / "r.md"
    r = runner.invoke(app, ["report", a, "--out", str(out), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "| bon | 0.500 | 0.500 |" in out.read_text()
    r = runner.invoke(app, ["report", a, "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output
    bad = tmp_path / "notes.md"
    bad.write_text("# not json")
    r = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "x.md")])
    assert r.exit_code == 2 and "is not a JSON results file" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.md")])
    assert r.exit_code == 2 and "no such results file" in r.output
    assert not (tmp_path / "x.md").exists()


def test_vbench_results_render_with_partial_aggregates(tmp_path):
    row = RUN | {"benchmark": "vbench", "model": "/x/shapes-t2v", "samples": 5,
                 "settings": {"steps": 25, "sampler": "euler", "steps_mode": "uniform", "runtime": None},
                 "dimensions": {"temporal_flickering": {"score": 0.98765, "method": "native"}},
                 "aggregate": {"partial": True, "quality": 0.9, "semantic": None, "total": None},
                 "command": "accel eval vbench"}
    f = _write(tmp_path / "v.json", row)
    assert kind_of([row]) == "vbench"
    out = tmp_path / "r.md"
    report([f], out, plots=False)
    assert "| shapes-t2v | 25 euler | 5 | 0.9877 | 0.9000* |  |  |" in out.read_text()


def test_moe_engine_rows_render_paired_speedups(tmp_path):
    row = RUN | {"bench": "moe_engine_cpu", "level": "moe_layers", "moe_layers": 5, "provider": "accel_engine",
                 "s_median": 0.0928, "speedup_vs_loop_paired_median": 1.69, "speedup_vs_loop_paired_q1": 1.55,
                 "speedup_vs_loop_paired_q3": 1.81, "max_abs_diff_vs_loop": 0.0, "threads": 1,
                 "command": "python bench.py"}
    f = _write(tmp_path / "m.json", [row])
    assert kind_of([row]) == "moe-engine"
    assert "| 1 | MoE layers (5) | accel engine | 92.8 | 1.69 (1.55-1.81) | 0 |" in render(f"moe-engine {f}")


def test_moe_bench_rows_render(tmp_path):
    moe = RUN | {"model": "moe", "capacity": 0.5, "method": "constant", "accuracy": 0.625, "seconds": 34.8,
                 "expert_flops_fraction": 0.667, "ffn_macs_per_token": 432128, "dropped_token_fraction": 0.404}
    dense = moe | {"model": "dense", "capacity": None, "method": "dense", "expert_flops_fraction": None,
                   "ffn_macs_per_token": 524288, "dropped_token_fraction": None}
    f = _write(tmp_path / "moe.json", [moe, dense])
    assert kind_of([moe]) == "moe"
    out = render(f"moe {f}")
    assert "| moe | 0.5 | constant | 0.625 | 0.67 | 432 | 0.40 | 34.8 |" in out
    assert "| dense | - | dense | 0.625 | - | 524 | - | 34.8 |" in out


def test_moe_router_rows_average_the_uncovered_tokens_per_sigma_band(tmp_path):
    by_sigma = {"1.0": 0.1, "0.8": 0.3, "0.6": 0.2, "0.3": 0.4, "0.001": 0.5}
    row = RUN | {"model": "moe", "capacity": 1.0, "method": "constant", "accuracy": 0.625, "seconds": 3.0,
                 "expert_flops_fraction": 1.0, "ffn_macs_per_token": 5e5, "dropped_token_fraction": 0.3,
                 "dropped_by_sigma": by_sigma}
    half = row | {"capacity": 0.5, "dropped_by_sigma": {"1.0": 0.6}}
    dense = row | {"model": "dense", "capacity": None, "method": "dense", "dropped_by_sigma": None}
    f = _write(tmp_path / "moe.json", [row, half, dense])
    out = render(f"moe-router {f}").splitlines()
    assert out[2] == "| moe | 1.0 | constant | 0.625 | 0.30 | 0.20 | 0.20 | 0.40 | 0.50 | 0.10-0.50 |" and out[3] == ""
    both = render(f"moe-router {f} capacities=0.5|1.0").splitlines()
    assert both[3] == "| moe | 0.5 | constant | 0.625 | 0.30 | 0.60 | - | - | - | 0.60-0.60 |" and both[4] == ""
    other = _write(tmp_path / "moe12.json", [row | {"seed": 12}])
    assert render(f"moe-router {f} {other}").splitlines()[3].startswith("| 12 | moe | 1.0 |")
    with pytest.raises(ValueError, match="no MoE rows with dropped_by_sigma at capacity 2"):
        render(f"moe-router {f} capacities=2")


def test_moe_train_time_rows_give_the_dense_steps_of_equal_time(tmp_path):
    row = RUN | {"bench": "moe_train_step_time", "threads": 2, "s_per_step": {"moe": 1.2, "dense": 1.0},
                 "s_per_step_rounds": {"moe": [1.1, 1.2, 1.4], "dense": [0.9, 1.0, 1.3]}, "moe_over_dense": 1.2,
                 "moe_steps": 4000, "dense_steps_same_time": 4800}
    f = _write(tmp_path / "t.json", [row])
    assert kind_of([row]) == "moe-train-time"
    out = render(f"moe-train-time {f}").splitlines()
    assert out[2] == "| moe | 2 | 1.20 | 1.10-1.40 | 1.000 | 4000 |"
    assert out[3] == "| dense | 2 | 1.00 | 0.90-1.30 | 0.833 | 4800 |"


def test_search_table_keeps_the_named_strategies_in_order(tmp_path):
    f = _write(tmp_path / "s.json", _search_rows(["bon", "rbf", "smc"], (1, 2)))
    out = render(f"search {f} strategies=smc|bon").splitlines()
    assert out[2].startswith("| smc |") and out[3].startswith("| bon |") and len(out) == 6
    with pytest.raises(ValueError, match="strategies not in the rows: beam"):
        render(f"search {f} strategies=beam")


def test_search_detail_table_shows_the_gap_and_the_calls(tmp_path):
    rows = _search_rows(["bon", "raise"], (4,))
    rows[1] |= {"reward": "shapes-verifier", "oracle_accuracy": 0.9, "hacking_gap": 0.25, "reward_calls": 8.0,
                "verifier_calls": 2.0, "agent_calls": 4.0}
    f = _write(tmp_path / "s.json", rows)
    out = render(f"search-detail {f} strategies=raise").splitlines()
    assert out[0].startswith("| strategy | budget | NFE / prompt | reward | accuracy | oracle | hacking gap")
    assert out[2].startswith("| raise | 4x |") and "| +0.250 | 8.0 | 2.0 | 4.0 |" in out[2] and len(out) == 5
    # rows of several prompt sets (one file per seed) say which set each line is from
    other = _write(tmp_path / "t.json", [r | {"seed": 7} for r in rows])
    out = render(f"search-detail {f} {other} strategies=raise").splitlines()
    assert out[0].startswith("| seed | strategy |") and out[2].startswith(f"| {rows[1]['seed']} | raise | 4x |")
    assert out[3].startswith("| 7 | raise | 4x |")


def test_search_table_value_option(tmp_path):
    rows = _search_rows(["bon"], (1, 4))
    for r, gap in zip(rows, (0.0, 0.125)):
        r |= {"oracle_accuracy": r["accuracy"] + gap, "hacking_gap": gap}
    f = _write(tmp_path / "s.json", rows)
    assert render(f"search {f} value=hacking_gap").splitlines()[2] == "| bon | +0.000 | +0.125 |"
    with pytest.raises(ValueError, match="allowed: accuracy"):
        render(f"search {f} value=seconds")
