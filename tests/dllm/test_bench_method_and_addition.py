"""The dLLM benchmark's method (interleaved rounds, repeats, spreads, intervals), the addition task, its training
script's exact resume, and the report's dllm rows."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.dllm import bench
from accel.dllm.bench import bench_dllm, wilson_interval
from accel.dllm.decode import DecodeStats, Generation
from accel.dllm.models import builtin_text_model_path, load_text_model
from accel.dllm.task import (ADDITION_LINE, ADDITION_VOCAB, VOCAB, AdditionProblem, add_with_carries, get_task,
                             is_held_out, parse_addition, problem_set, score)
from accel.evals.report import render
from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


# -- the statistics (the schedule: tests/evals/test_timing.py) ----------------------------------------------------


def test_wilson_interval_matches_its_closed_forms():
    z2 = 1.96**2
    assert wilson_interval(0, 24) == (0.0, pytest.approx(z2 / (24 + z2)))  # upper bound at 0 successes
    assert wilson_interval(24, 24) == (pytest.approx(24 / (24 + z2)), 1.0)  # lower bound at n successes
    low, high = wilson_interval(12, 24)
    assert low == pytest.approx(1 - high) and low < 0.5 < high and high - low < 0.45
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


class _ClockModel:
    """A stand-in for generate: a decode's seconds are its decoder's cost times a machine load that grows with
    every call (doubling over the run), as when another job starts; its tokens are the answer or not."""

    def __init__(self, cost: dict[str, float], right: set[str], answers: dict[tuple, list[int]], calls: int):
        self.cost, self.right, self.answers, self.calls, self.k = cost, right, answers, calls, 0

    def __call__(self, model, prompt, config, gen_length, delimiter_id=None):
        seconds = self.cost[config.name] * (1 + self.k / self.calls)
        self.k += 1
        answer = self.answers[tuple(prompt)]
        tokens = answer if config.name in self.right else [0] * gen_length
        return Generation(torch.tensor(tokens), DecodeStats(nfe=7, positions=70, seconds=seconds))


def test_interleaved_speedup_survives_a_load_change_and_rows_carry_spread_and_interval(monkeypatch):
    tok = CharTokenizer(list(ADDITION_VOCAB))
    prompts, repeats, gen = 6, 3, 20
    problems = get_task("addition").problem_set(prompts, seed=5)
    answers = {tuple(tok.prompt_ids(p.prompt)): tok.encode(p.answer(gen)) for p in problems}
    fake = _ClockModel({"llada": 10.0, "fast-dllm": 1.0}, {"llada"}, answers, calls=2 * (prompts * repeats + 1))
    monkeypatch.setattr(bench, "generate", fake)
    seen = []
    rows = bench_dllm(None, tok, prompts=prompts, seed=5, gen_length=gen, decoders=("llada", "fast-dllm"),
                      task="addition", repeats=repeats, progress=seen.append)
    assert fake.k == 2 * (prompts * repeats + 1)  # a warm-up round, then every decoder on every prompt per repeat
    assert [s["decoder"] for s in seen[:4]] == ["llada", "fast-dllm", "fast-dllm", "llada"]
    base, fast = rows
    # The load doubled over the run, yet the paired speed-up is the true cost ratio within 3%: each round's
    # decoders ran back to back. (Timed one after the other, the load would have cut it by more than a quarter.)
    assert fast["speedup"] == pytest.approx(10.0, rel=0.03)
    assert base["speedup"] == 1.0 and base["speedup_spread"] == 0.0
    assert fast["speedup_min"] <= fast["speedup"] <= fast["speedup_max"]
    assert 0 < fast["speedup_spread"] < 0.05
    assert fast["tokens_per_s_min"] <= fast["tokens_per_s"] <= fast["tokens_per_s_max"]
    assert base["accuracy"] == 1.0 and base["accuracy_ci95_high"] == 1.0 and base["accuracy_ci95_low"] < 1.0
    assert fast["accuracy"] == 0.0 and fast["accuracy_ci95_low"] == 0.0 and 0 < fast["accuracy_ci95_high"] < 0.5
    for row in rows:
        assert row["task"] == "addition" and row["repeats"] == repeats and row["repeat_mismatches"] == 0
        assert row["nfe"] == 7 and row["positions"] == 70 and row["prompts"] == prompts
        for key in ("decoder", "accuracy", "speedup", "tokens_per_s", "speedup_spread", "token_accuracy"):
            assert key in row


def test_one_repeat_has_no_spread_and_bad_input_is_refused(tiny_text_folder):
    model, tok = load_text_model(tiny_text_folder(VOCAB, dim=16, max_len=64))
    rows = bench_dllm(model, tok, prompts=1, gen_length=16,
                      decoders=("llada:block_length=16", "fast-dllm:block_length=16"), repeats=1)
    assert [r["speedup_spread"] for r in rows] == [None, None] and rows[0]["task"] == "counting"
    with pytest.raises(ValueError, match="cannot encode the addition task's prompts"):
        bench_dllm(model, tok, prompts=1, gen_length=16, decoders=("llada",), task="addition")
    with pytest.raises(ValueError, match="allowed: counting, addition"):
        bench_dllm(model, tok, prompts=1, gen_length=16, task="sorting")
    with pytest.raises(ValueError, match="repeats"):
        bench_dllm(model, tok, prompts=1, gen_length=16, repeats=0)


# -- the addition task --------------------------------------------------------------------------------------------


def test_carries_are_written_column_by_column():
    assert add_with_carries(999, 1) == ("0111", 1000)
    assert add_with_carries(9999, 1) == ("1111", 0)  # the thousands' carry is written, the sum is mod 10^4
    assert add_with_carries(4821, 967) == ("0100", 5788)
    assert add_with_carries(0, 0) == ("0000", 0)
    lines = AdditionProblem(999, 1).answer(5 * ADDITION_LINE).splitlines()
    assert lines == ["0000,0999", "0000,0001", "0111,1000", "0000,1001", "0000,2001"]


def test_every_addition_line_is_the_sum_of_the_two_above_with_its_carries():
    for p in get_task("addition").problem_set(20, seed=3):
        text = p.answer(256)
        assert len(text) == 256 and len(CharTokenizer(list(ADDITION_VOCAB)).encode(text)) == 256
        lines = text.split("\n")[:-1]  # the last line is cut at 256 tokens
        numbers = [int(line[5:]) for line in lines]
        assert numbers[:2] == [p.a, p.b] and lines[0][:4] == lines[1][:4] == "0000"
        for n in range(2, len(lines)):
            x, y = numbers[n - 2], numbers[n - 1]
            assert numbers[n] == (x + y) % 10_000
            for j in range(4):  # the carry out of column j, written at index 3 - j, from the digits alone
                low = 10 ** (j + 1)
                assert int(lines[n][3 - j]) == int(x % low + y % low >= low)
        assert len(set(numbers)) > len(numbers) // 2  # no short cycle


def test_addition_prompts_scores_and_splits():
    p = parse_addition("add 4821 + 0967")
    assert p == AdditionProblem(4821, 967) and p.prompt == "add 4821 + 0967"
    for bad in ("add 4821 + 967", "add 4821 0967", "count 137 by 7", "add 48a1 + 0967"):
        with pytest.raises(ValueError, match="'add AAAA \\+ BBBB'"):
            parse_addition(bad)
    ref = p.answer(64)
    assert score(ref, p, 64) == (True, 1.0)
    wrong = ref[:40] + ("1" if ref[40] != "1" else "2") + ref[41:]
    assert score(wrong, p, 64) == (False, 63 / 64)
    task = get_task("addition")
    tests = task.problem_set(50, seed=0)
    assert tests == task.problem_set(50, seed=0) and tests != task.problem_set(50, seed=1)
    assert all(is_held_out(q) for q in tests)
    rng = random.Random(0)
    assert not any(is_held_out(task.train_problem(rng)) for _ in range(400))
    assert ADDITION_VOCAB[:len(VOCAB)] == VOCAB  # counting's token ids unchanged
    assert get_task("counting").problem_set(8, seed=4) == problem_set(8, seed=4)  # the recorded problem sets


def test_the_addition_model_is_registered_and_says_how_to_train_it():
    try:
        path = builtin_text_model_path("addition")
    except FileNotFoundError as e:
        assert "scripts/train_mdlm.py --task addition" in str(e) and "addition-mdlm.TRAINING.md" in str(e)
    else:
        assert path.name == "addition-mdlm"


# -- the training script ------------------------------------------------------------------------------------------


def _train_mdlm():
    spec = importlib.util.spec_from_file_location("train_mdlm", ROOT / "scripts" / "train_mdlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_mdlm_addition_runs_and_resumes_exactly(tmp_path):
    train = _train_mdlm()
    common = ["--task", "addition", "--steps", "3", "--batch", "2", "--dim", "16", "--layers", "1", "--heads", "2",
              "--threads", "1"]
    straight = tmp_path / "straight"
    assert train.main(common + ["--out", str(straight), "--work", str(tmp_path / "w1")]) == straight
    parted = tmp_path / "parted"
    args = common + ["--out", str(parted), "--work", str(tmp_path / "w2")]
    assert train.main(args + ["--stop-at", "1"]) is None and not parted.exists()
    with pytest.raises(ValueError, match="run with other options .*--lr: 0.002 there, 0.001 now"):
        train.main(args + ["--lr", "1e-3"])
    assert train.main(args) == parted
    a = MaskedDiffusionLM.from_pretrained(straight).state_dict()
    b = MaskedDiffusionLM.from_pretrained(parted).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # stopped after step 1 and resumed: bit for bit
    record = json.loads((parted / "training.json").read_text())
    assert record["task"] == "addition" and record["steps"] == 3
    assert CharTokenizer.load(parted).vocab == list(ADDITION_VOCAB)


# -- the CLI and the report ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_addition(tiny_text_folder):
    return tiny_text_folder(ADDITION_VOCAB, dim=16, max_len=64)


def test_bench_dllm_addition_command_and_its_report(tiny_addition, tmp_path):
    out = tmp_path / "a.json"
    r = runner.invoke(app, ["bench", "dllm", "--task", "addition", "--model", tiny_addition, "--prompts", "2",
                            "--repeats", "2", "--gen-length", "32", "--decoders", "llada,fast-dllm:threshold=0.5",
                            "--json", str(out), "--allow-dirty"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["task"] for row in rows] == ["addition"] * 2 and rows[0]["speedup"] == 1.0
    table = render(f"dllm {out}").splitlines()
    assert table[0] == ("| decoder | tokens/s (median) | speedup (spread) | exact match [95% CI] | NFE | "
                        "token-forwards |")
    assert table[2].startswith("| llada |") and "1.0x (0%)" in table[2] and "[0.00, 0.66]" in table[2]
    for args, message in [(["--task", "addition", "--model", tiny_addition, "--repeats", "0"], "--repeats"),
                          (["--task", "sorting"], "allowed: counting, addition")]:
        r = runner.invoke(app, ["bench", "dllm", *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    if not (Path(builtin_text_model_path("counting")).parent / "addition-mdlm" / "model.safetensors").exists():
        r = runner.invoke(app, ["bench", "dllm", "--task", "addition"])
        assert r.exit_code == 2 and "train_mdlm.py --task addition" in r.output


def test_report_renders_new_rows_with_spread_and_old_rows_as_recorded(tmp_path):
    old = ROOT / "benchmarks" / "dllm" / "counting-256-24p-seed0.json"
    lines = render(f"dllm {old}").splitlines()
    assert lines[0] == "| decoder | tokens/s | speedup | exact match | NFE | token-forwards |"
    new = {"decoder": "fast-dllm", "tokens_per_s": 1234.4, "speedup": 12.34, "speedup_spread": 0.081,
           "accuracy": 0.9583, "accuracy_ci95_low": 0.7976, "accuracy_ci95_high": 0.9926, "nfe": 30.2,
           "positions": 2345.0, "task": "addition"}
    f = tmp_path / "new.json"
    f.write_text(json.dumps([new]))
    assert "| fast-dllm | 1,234 | 12.3x (8%) | 0.958 [0.80, 0.99] | 30 | 2,345 |" in render(f"dllm {f}")
    mixed = render(f"dllm {old} {f}").splitlines()  # two tasks: a task column; old rows without spread / interval
    assert mixed[0].startswith("| task | decoder |") and mixed[2].startswith("| counting | llada | 28 | 1.0x |")
    assert "| addition | fast-dllm | 1,234 | 12.3x (8%) |" in "\n".join(mixed)
