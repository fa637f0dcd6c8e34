"""lm-eval-harness on accel's decoders: the harness's rules on the built-in model (no lm-eval needed), then
lm-eval itself running the local counting tasks (tests/dllm/lm_eval_tasks) with `--model accel-dllm`."""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.dllm import generate
from accel.dllm.bench import parse_decoder
from accel.dllm.harness import DLLMEvaluator, GenRequest, encode_pair, gen_request, mc_loglikelihood
from accel.dllm.task import Problem, answer

TASKS = Path(__file__).with_name("lm_eval_tasks")
ROWS = [json.loads(line) for line in (TASKS / "counting.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluator():
    return DLLMEvaluator(path="counting-mdlm", decoder="fast-dllm:threshold=0.9", batch_size=4, mc_num=16,
                         greedy_check=False)


def _own(model, tok, prompt: str, n: int, decoder: str = "fast-dllm:threshold=0.9", **options) -> str:
    """accel's own decoding of one prompt, as `accel text` does it."""
    return tok.decode(generate(model, tok.prompt_ids(prompt), parse_decoder(decoder), n, **options).tokens)


def test_task_data_are_the_counting_answers():
    for row in ROWS:
        p = Problem(int(row["prompt"].split()[1]), int(row["prompt"].split()[3]))
        wrong = Problem(p.start, p.step % 9 + 1)
        assert row["answer"] == answer(p, 15)
        assert row["choices"][row["label"]] == answer(p, 32) and answer(wrong, 32) in row["choices"]
    assert {row["label"] for row in ROWS} == {0, 1}  # the right choice is not always first


def test_generate_until_is_accels_decoding_cut_at_the_stop_strings(evaluator):
    model, tok = evaluator.model, evaluator.tokenizer
    # max_gen_toks 16 -> 32 tokens decoded (the block length), cut back to 16 tokens, then at the newline.
    assert evaluator.answer_length(16) == 32 and evaluator.answer_length(64) == 64
    requests = [GenRequest(row["prompt"], ("\n",), 16) for row in ROWS]
    texts = evaluator.generate_until(requests)
    assert texts == [_own(model, tok, r.context, 32)[:16].split("\n")[0] for r in requests]
    assert texts == [row["answer"] for row in ROWS]
    assert evaluator.totals.batch_sizes == [4, 2] and evaluator.totals.nfe > 0
    # No stop string: the whole answer of max_gen_toks tokens; the earliest of several stop strings wins.
    assert evaluator.generate_until([GenRequest(ROWS[0]["prompt"], (), 20)]) == [ROWS[0]["choices"][0][:20]]
    assert evaluator.generate_until([GenRequest(ROWS[0]["prompt"], ("\n", "4,9"), 32)]) == ["981,98"]
    # A decoder without blocks decodes max_gen_toks tokens as they are (each sample alone: window's positions
    # are per sample).
    window = DLLMEvaluator(path="counting", decoder="window:window=32:threshold=0.9", batch_size=4)
    assert window.answer_length(20) == 20
    requests = [GenRequest(row["prompt"], ("\n",), 32) for row in ROWS]
    assert window.generate_until(requests) == [_own(model, tok, r.context, 32, "window:window=32:threshold=0.9")
                                               .split("\n")[0] for r in requests] == [row["answer"] for row in ROWS]


def test_gen_length_fixes_the_answer_and_eos_stop_cuts_it(evaluator):
    model, tok = evaluator.model, evaluator.tokenizer
    fixed = DLLMEvaluator(path="counting", decoder="fast-dllm:threshold=0.9", gen_length=64, eos_stop=True)
    prompt = ROWS[1]["prompt"]
    assert fixed.generate_until([GenRequest(prompt, (), 8)]) == [_own(model, tok, prompt, 64, eos_id=tok.eos_id)]
    eos = torch.tensor([*tok.encode("12,3"), tok.eos_id, *tok.encode("45")])
    assert fixed._text(eos, ()) == "12,3"


def test_one_token_loglikelihood_is_exact_and_batches_do_not_change_it(evaluator):
    model, tok = evaluator.model, evaluator.tokenizer
    prefix, target = encode_pair(tok, ROWS[0]["prompt"], " 9")
    assert prefix == tok.prompt_ids(ROWS[0]["prompt"]) and target == [tok.index["9"]]
    with torch.no_grad():
        logits = model(torch.tensor([prefix + [model.mask_id]]))[0, -1]
    exact = float(torch.log_softmax(logits.double(), -1)[target[0]])
    ll = mc_loglikelihood(model, prefix, target, 4, 3, torch.Generator().manual_seed(0))
    assert ll == pytest.approx(exact, abs=1e-4)  # float32 forwards of other batch shapes round differently by CPU
    _, target = encode_pair(tok, ROWS[0]["prompt"], ROWS[0]["choices"][0])
    one, five = (mc_loglikelihood(model, prefix, target, 10, b, torch.Generator().manual_seed(0)) for b in (1, 5))
    assert one == pytest.approx(five, rel=1e-5)


def test_loglikelihood_prefers_the_right_answer_and_checks_greedy(evaluator):
    row = ROWS[0]
    scored = evaluator.loglikelihood([(row["prompt"], " " + c) for c in row["choices"]])
    (right, _), (wrong, _) = scored[row["label"]], scored[1 - row["label"]]
    assert right > wrong + 10
    greedy = DLLMEvaluator(path="counting", mc_num=1)  # greedy_check on (the default)
    checks = [g for _, g in greedy.loglikelihood([(row["prompt"], " " + c) for c in row["choices"]])]
    assert checks == [c == answer(Problem(981, 3), 32) for c in row["choices"]] and any(checks)


@pytest.mark.parametrize("options, message", [
    ({}, "path= is required"),
    ({"path": "gpt2"}, "neither a built-in text model nor a folder"),
    ({"path": "counting", "decoder": "beam"}, "unknown decoder 'beam'; allowed: llada"),
    ({"path": "counting", "decoder": "fast-dllm:treshold=0.9"}, "unknown option for fast-dllm: treshold"),
    ({"path": "counting", "batch_size": "auto"}, "'auto' is not supported"),
    ({"path": "counting", "dtype": "float8"}, "dtype must be one of float32"),
])
def test_bad_model_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        DLLMEvaluator(**options)


def test_a_folder_that_is_not_a_dllm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel checkpoint, not a masked-diffusion LM"):
        DLLMEvaluator(path=str(tmp_path))
    with pytest.raises(ValueError, match="LLaDA / Dream"):
        DLLMEvaluator(path=str(tmp_path / "nothing"))


def test_bad_generation_options():
    assert gen_request("x", {"until": "\n"}) == GenRequest("x", ("\n",), 256)
    assert gen_request("x", {"until": ["a", "b"], "max_gen_toks": 8, "do_sample": False, "temperature": 0,
                             "top_p": 0.95}) == GenRequest("x", ("a", "b"), 8)
    for kwargs, message in [({"do_sample": True}, "greedy"), ({"temperature": 0.7}, "greedy"),
                            ({"num_beams": 4}, "allowed: until, max_gen_toks"), ({"max_gen_toks": 0}, ">= 1")]:
        with pytest.raises(ValueError, match=message):
            gen_request("x", kwargs)


def test_accel_lm_eval_without_lm_eval_says_how_to_install(monkeypatch):
    for name in [n for n in sys.modules if n == "lm_eval" or n.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    monkeypatch.delitem(sys.modules, "accel.dllm.lm_eval", raising=False)
    r = CliRunner().invoke(app, ["lm-eval", "--model", "accel-dllm", "--tasks", "gsm8k"])
    assert r.exit_code == 2 and "pip install 'accel[lm-eval]'" in r.output, r.output


# --- lm-eval itself -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness():
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'accel[lm-eval]'")
    import accel.dllm.lm_eval  # noqa: F401  (registers accel-dllm)
    from lm_eval.tasks import TaskManager

    return lm_eval, TaskManager(include_path=str(TASKS), include_defaults=False)


def test_lm_eval_scores_the_local_tasks_with_accels_decoding(harness, evaluator):
    lm_eval, tasks = harness
    from accel.dllm.lm_eval import AccelDLLM

    assert lm_eval.api.registry.get_model("accel-dllm") is AccelDLLM
    out = lm_eval.simple_evaluate(model="accel-dllm", model_args="path=counting,decoder=fast-dllm:threshold=0.9,"
                                  "mc_num=16,greedy_check=false", tasks=["accel_counting", "accel_counting_mc"],
                                  task_manager=tasks, batch_size=4, device="cpu", log_samples=True)
    model, tok = evaluator.model, evaluator.tokenizer
    own = {row["prompt"]: _own(model, tok, row["prompt"], 32).split("\n")[0] for row in ROWS}
    samples = out["samples"]["accel_counting"]
    assert len(samples) == len(ROWS)
    for s in samples:
        assert s["resps"] == [[own[s["doc"]["prompt"]]]]
    expected = sum(own[row["prompt"]] == row["answer"] for row in ROWS) / len(ROWS)
    assert out["results"]["accel_counting"]["exact_match,none"] == expected == 1.0
    assert out["results"]["accel_counting_mc"]["acc,none"] == 1.0
    assert out["config"]["accel_nfe"] > 0 and "FastDLLMConfig" in out["config"]["accel_decoder"]


def test_lm_eval_refuses_perplexity_tasks_and_bad_paths(harness):
    from accel.dllm.lm_eval import AccelDLLM

    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        AccelDLLM.loglikelihood_rolling(None, [])
    with pytest.raises(ValueError, match="path= is required"):
        AccelDLLM.create_from_arg_string("decoder=llada")


def test_accel_lm_eval_command_hands_its_arguments_to_lm_eval(harness):
    r = CliRunner().invoke(app, ["lm-eval", "--help"])
    assert r.exit_code == 0 and "lm-eval" in r.output and "run" in r.output


@pytest.mark.slow  # lm-eval's command line indexes its ~15,000 built-in tasks first (about a minute)
def test_accel_lm_eval_command_runs_a_task(harness):
    r = CliRunner().invoke(app, ["lm-eval", "--model", "accel-dllm", "--model_args", "path=counting,gen_length=32",
                                 "--tasks", "accel_counting", "--include_path", str(TASKS), "--device", "cpu",
                                 "--batch_size", "2", "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert "|accel_counting|" in r.output.replace(" ", "") and "exact_match" in r.output
