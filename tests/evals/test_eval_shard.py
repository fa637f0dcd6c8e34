"""Scale-out and resume of the evals: results folders that refuse another run, a run killed at 50% and resumed
equals an uninterrupted one, and 2 processes (torchrun, gloo on CPU) equal 1 (the CLI runs of both evals: slow,
about a minute on 2 cores; the chunks' split and gather: fast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.shard import RunFolder, run_chunks
from accel.shapes import prompt_set

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tiny_shapes_folder):
    return tiny_shapes_folder


def test_run_folder_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder(out, {"steps": 2, "seed": 0})
    assert folder.check() == 0
    folder.prepare()
    folder.save(0, {"rows": []})
    assert RunFolder(out, {"steps": 2, "seed": 0}).check() == 1  # same settings: resumes, 1 chunk done
    with pytest.raises(ValueError, match=r"holds a different run \(steps 2 there, 3 here\)"):
        RunFolder(out, {"steps": 3, "seed": 0}).check()
    assert RunFolder(out, {"steps": 3, "seed": 0}).check(overwrite=True) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no accel run"):
        RunFolder(other, {}).check()
    new_run = {"eval": "shapes", "steps": 3}
    RunFolder(out, new_run).prepare(overwrite=True)  # our files go; the folder is the new run's
    assert RunFolder(out, new_run).check() == 0 and not list((out / "accel-run").iterdir())
    with pytest.raises(ValueError, match=r"holds a different run \(eval 'shapes' there, 'geneval' here; steps"):
        RunFolder(out, {"eval": "geneval", "steps": 2}).check()  # the other eval named first
    deep = tmp_path / "new" / "runs" / "a"  # missing parents are made, as `mkdir -p` does
    assert RunFolder(deep, {}).check() == 0
    RunFolder(deep, {}).prepare()
    assert (deep / "accel-run.json").is_file()
    with pytest.raises(ValueError, match="notes.txt is a file, not a folder"):
        RunFolder(other / "notes.txt" / "a", {}).check()


def test_run_chunks_skips_what_is_done(tmp_path):
    calls, seen = [], []

    def work(indices):
        calls.append(indices.start)
        if len(calls) == 3 and first:
            raise KeyboardInterrupt  # killed in the third chunk
        return {"rows": list(indices)}

    folder = RunFolder(tmp_path, {"n": 10})
    folder.prepare()
    first = True
    with pytest.raises(KeyboardInterrupt):
        run_chunks(10, 3, work, folder=folder)
    first, calls = False, []
    records = run_chunks(10, 3, work, folder=folder, progress=lambda done, total: seen.append((done, total)))
    assert calls == [6, 9] and seen == [(6, 10), (9, 10), (10, 10)]
    assert [row for r in records for row in r["rows"]] == list(range(10))


def interrupt_after(monkeypatch, calls: int):
    """sample_images raises KeyboardInterrupt at its call number `calls` + 1 (a kill mid-run)."""
    import accel.evals.geneval as geneval

    real, count = geneval.sample_images, [0]

    def sample(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(geneval, "sample_images", sample)
    return count


def test_eval_shapes_killed_at_half_resumes_to_the_same_result(model, tmp_path, monkeypatch):
    from accel.evals.shapes import evaluate_shapes
    from accel.models import load_pipeline

    pipe = load_pipeline(model)
    whole = evaluate_shapes(pipe, prompts=8, seed=2, steps=2, batch_size=2, state={})
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            evaluate_shapes(pipe, prompts=8, seed=2, steps=2, batch_size=2, out=tmp_path / "run", state={})
    assert len(list((tmp_path / "run" / "accel-run").iterdir())) == 2  # half the chunks were done
    count = interrupt_after(monkeypatch, 99)
    resumed = evaluate_shapes(pipe, prompts=8, seed=2, steps=2, batch_size=2, out=tmp_path / "run", state={})
    assert count[0] == 2  # only the other half ran
    for key in ("per_tag", "per_tag_strict", "overall", "accuracy_images", "nfe"):
        assert resumed[key] == whole[key]


def test_eval_geneval_killed_at_half_resumes_to_the_same_files(model, tmp_path, monkeypatch):
    meta = tmp_path / "m.jsonl"
    meta.write_text("".join(json.dumps(m) + "\n" for m in prompt_set(4, seed=3)))
    args = ["eval", "geneval", "--model", model, "--metadata", meta, "--images-per-prompt", 2, "--steps", 2,
            "--seed", 3, "--allow-dirty"]
    assert run(*args, "--out", tmp_path / "whole").exit_code == 0
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        r = run(*args, "--out", tmp_path / "killed")
        assert r.exit_code == 130  # click's answer to KeyboardInterrupt
    assert len(list((tmp_path / "killed" / "accel-run").iterdir())) == 2  # 2 of the 4 prompts
    r = run(*args, "--out", tmp_path / "killed", "--steps", 3)
    assert r.exit_code == 2 and "holds a different run" in r.output and "steps" in r.output
    r = run(*args, "--out", tmp_path / "killed")
    assert r.exit_code == 0 and "resuming: 2 of 4 prompts already done" in r.output
    assert same_results(tmp_path / "whole", tmp_path / "killed")


def same_results(a: Path, b: Path) -> bool:
    """Same results.jsonl (but for the folder in the file names), summary scores and sample files."""
    rows_a = (a / "results.jsonl").read_text().replace(str(a), "OUT")
    rows_b = (b / "results.jsonl").read_text().replace(str(b), "OUT")
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    return (rows_a == rows_b and sa["per_tag"] == sb["per_tag"] and sa["nfe"] == sb["nfe"] and pngs
            and pngs == sorted(p.relative_to(b) for p in b.rglob("*.png"))
            and all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs))


def torchrun(*args: str) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(Path(__file__).with_name("shard_worker.py")), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_share_the_chunks(tmp_path):
    torchrun("chunks", str(tmp_path / "records.json"))
    records = json.loads((tmp_path / "records.json").read_text())
    assert [row for r in records for row in r["rows"]] == [i * i for i in range(10)]  # all, in order
    assert [r["rank"] for r in records] == [0, 1, 0, 1]  # chunk c on process c % 2


@pytest.mark.slow
def test_two_processes_equal_one(model, tmp_path):
    meta = tmp_path / "m.jsonl"
    meta.write_text("".join(json.dumps(m) + "\n" for m in prompt_set(5, seed=4)))
    geneval = ["eval", "geneval", "--model", model, "--metadata", str(meta), "--images-per-prompt", "2",
               "--steps", "2", "--seed", "4", "--allow-dirty"]
    shapes = ["eval", "shapes", "--model", model, "--prompts", "7", "--steps", "2", "--seed", "4", "--batch-size",
              "2", "--allow-dirty"]
    commands = [geneval + ["--out", str(tmp_path / "two")], shapes + ["--json", str(tmp_path / "two.json")]]
    torchrun("cli", json.dumps(commands))
    assert run(*geneval, "--out", tmp_path / "one").exit_code == 0
    assert same_results(tmp_path / "one", tmp_path / "two")
    r = run(*shapes, "--json", tmp_path / "one.json")
    assert r.exit_code == 0, r.output
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    for key in ("per_tag", "per_tag_strict", "overall", "accuracy_images", "nfe", "n"):
        assert one[key] == two[key]
