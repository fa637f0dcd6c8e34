"""The transformers adapter on a tiny masked LM of the same interface, and the CLI commands."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.dllm import generate
from accel.dllm.hf import load_hf_dllm
from accel.dllm.task import VOCAB

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny BertForMaskedLM folder: bidirectional, forward(input_ids).logits, like LLaDA's remote code."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def test_hf_adapter_decodes_without_cache(tiny_hf):
    model, tok = load_hf_dllm(tiny_hf, kind="llada")
    assert model.mask_id == tok.tokenizer.mask_token_id and model.config.max_len == 128
    prompt = tok.prompt_ids("a b c")
    base = generate(model, prompt, "llada", 32, block_length=16)
    fast = generate(model, prompt, "fast-dllm", 32, block_length=16, threshold=1.0, cache="none")
    assert torch.equal(base.tokens, fast.tokens) and not bool((base.tokens == model.mask_id).any())
    # The logits are the checkpoint's own.
    ids = torch.tensor([prompt])
    assert torch.equal(model(ids), model.model(input_ids=ids).logits)
    for decoder, options in [("window", {}), ("fast-dllm", {"cache": "dual"})]:
        with pytest.raises(ValueError, match="no per-layer K/V"):
            generate(model, prompt, decoder, 32, **options)


def test_hf_dream_logits_are_shifted(tiny_hf):
    model, _ = load_hf_dllm(tiny_hf, kind="dream")
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    raw = model.model(input_ids=ids).logits
    assert torch.equal(model(ids)[:, 1:], raw[:, :-1])
    with pytest.raises(ValueError, match="kind"):
        load_hf_dllm(tiny_hf, kind="gpt")


@pytest.fixture(scope="module")
def tiny_folder(tiny_text_folder):
    return tiny_text_folder(VOCAB)


def test_text_command(tiny_folder):
    r = runner.invoke(app, ["text", "count 137 by 7", "--model", tiny_folder, "--gen-length", "32", "--decoder",
                            "window:window=16:active=4"])
    assert r.exit_code == 0, r.output
    assert "window:" in r.output and "tokens/s" in r.output
    for args, message in [(["text", "count 137 by 7", "--model", tiny_folder, "--decoder", "nope"], "allowed"),
                          (["text", "count 137 by 7", "--model", tiny_folder, "--gen-length", "33"], "block_length"),
                          (["text", "count 137 by 7", "--model", tiny_folder, "--gen-length", "512"], "context"),
                          (["text", "  ", "--model", tiny_folder], "empty"),
                          (["text", "count 31 by 4"], "count SSS by K")]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output


def test_bench_dllm_command(tiny_folder, tmp_path):
    out, plot = tmp_path / "d.json", tmp_path / "d.png"
    r = runner.invoke(app, ["bench", "dllm", "--model", tiny_folder, "--prompts", "2", "--gen-length", "32",
                            "--decoders", "llada,fast-dllm:threshold=0.5,window:window=16", "--json", str(out),
                            "--allow-dirty",
                            "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["decoder"] for row in rows] == ["llada", "fast-dllm:threshold=0.5", "window:window=16"]
    for row in rows:
        for key in ("decoder", "gen_length", "tokens_per_s", "speedup", "accuracy", "nfe", "machine", "command"):
            assert key in row
    assert rows[0]["speedup"] == 1.0 and rows[0]["nfe"] == 32
    assert plot.stat().st_size > 0
