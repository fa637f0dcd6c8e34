"""Native LLaDA and Dream: tiny random checkpoints in the official layout (config.json with the official keys,
model.safetensors with the official parameter names) load through accel's loader, their cached forwards equal
their full forwards, every decoder runs on them, and bad checkpoints fail with one clear line.

Logits equality with the official modelling code itself is checked outside the test suite (the official code is
not shipped): docs/dllm.md, "How the native models were verified".
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from accel.cli.main import app
from accel.dllm import generate
from accel.dllm.dream import DreamModel, dream_config
from accel.dllm.llada import LLaDAModel, llada_config
from accel.dllm.models import load_text_model

WORDS = ["[PAD]", "[UNK]", "<|eot|>", "<|mdm_mask|>", *"abcdefghijklmnopqrstuvwxyz", *"0123456789", "\n"]
VOCAB = 48  # > len(WORDS); the extra rows are never decoded by the tokenizer
MASK = WORDS.index("<|mdm_mask|>")
EOS = WORDS.index("<|eot|>")

LLADA_CONFIG = {
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
    "attention_layer_norm": False, "block_type": "llama", "block_group_size": 1, "d_model": 32, "n_heads": 4,
    "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 48, "mlp_ratio": 4, "embedding_size": VOCAB,
    "vocab_size": VOCAB, "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 96,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "weight_tying": False,
    "input_emb_norm": False, "mask_token_id": MASK, "eos_token_id": EOS,
}
DREAM_CONFIG = {
    "architectures": ["DreamModel"], "model_type": "Dream", "vocab_size": VOCAB, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 96, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "rope_theta": 1000000.0, "rope_scaling": None, "use_sliding_window": False, "mask_token_id": MASK,
}
# Official parameter names (GSAI-ML modeling_llada.py, Dream-org modeling_dream.py), layer 0 and the rest.
LLADA_NAMES = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight",
               *(f"model.transformer.blocks.0.{n}.weight" for n in ("attn_norm", "q_proj", "k_proj", "v_proj",
                                                                    "attn_out", "ff_norm", "ff_proj", "up_proj",
                                                                    "ff_out"))}
DREAM_NAMES = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
               *(f"model.layers.0.self_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj")
                 for w in ("weight", "bias")),
               "model.layers.0.self_attn.o_proj.weight", "model.layers.0.input_layernorm.weight",
               "model.layers.0.post_attention_layernorm.weight",
               *(f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj"))}


def _tokenizer(folder):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="<|eot|>").save_pretrained(folder)


def _write(folder, config: dict, model) -> None:
    """The official layout: config.json + model.safetensors (+ a tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    _tokenizer(folder)


def _random(cls, config, seed):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # random norms too, and sharp logits so that confidences spread out
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.2) + ("norm" in name or "ln_f" in name))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    llada = _random(LLaDAModel, llada_config(LLADA_CONFIG, MASK), 0)
    dream = _random(DreamModel, dream_config(DREAM_CONFIG, MASK), 1)
    _write(root / "llada", LLADA_CONFIG, llada)
    _write(root / "dream", DREAM_CONFIG, dream)
    return {"llada": (root / "llada", llada), "dream": (root / "dream", dream)}


@pytest.mark.parametrize("arch, names", [("llada", LLADA_NAMES), ("dream", DREAM_NAMES)])
def test_official_names_load_through_the_loader(checkpoints, arch, names):
    folder, built = checkpoints[arch]
    assert names <= set(built.state_dict())
    assert not any(".blocks.1." in n or ".layers.1." in n for n in names)  # layer 0 only: the set is per layer
    model, tok = load_text_model(str(folder))
    assert type(model) is type(built) and model.mask_id == MASK and model.config.max_len == 96
    assert tok.mask_id == MASK and tok.eos_id == EOS
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids), built(ids))
    assert model.logits_shift == (1 if arch == "dream" else 0)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_subset_forward_with_cache_equals_full_forward(checkpoints, arch):
    _, model = checkpoints[arch]
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 40)
        assert torch.allclose(model(ids, cache=cache), full, atol=1e-5)
        pos = torch.tensor([2, 9, 10, 33])
        assert torch.allclose(model(ids[:, pos], positions=pos, cache=cache), full[:, pos], atol=1e-5)
        # rotary by index: the same tokens at other positions give other logits
        assert not torch.allclose(model(ids[:, pos], positions=pos + 1, cache=cache), full[:, pos], atol=1e-3)
        keys = torch.arange(12)  # pruning keys changes the result (the far field is really left out)
        assert not torch.allclose(model(ids[:, pos], positions=pos, cache=cache, keys=keys), full[:, pos], atol=1e-3)


PROMPT = [WORDS.index(c) for c in "count123"]


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_every_decoder_runs(checkpoints, arch):
    """Every decoder and cache mode decodes every position once; the exact limits equal the full-forward
    reference loop (LLaDA's baseline): Fast-dLLM with threshold 1.0 and no cache commits in its order, and so does
    a window covering everything with a refresh every step (a full forward each step)."""
    _, model = checkpoints[arch]
    base = generate(model, PROMPT, "llada", 32, block_length=32)
    assert not bool((base.tokens == MASK).any())
    fast = generate(model, PROMPT, "fast-dllm", 32, block_length=32, threshold=1.0, cache="none")
    assert fast.stats.order == base.stats.order and torch.equal(fast.tokens, base.tokens)
    window = generate(model, PROMPT, "window", 32, window=32, active=16, refresh=1)
    assert window.stats.order == base.stats.order and torch.equal(window.tokens, base.tokens)
    for name, options in [("fast-dllm", {"cache": "dual", "threshold": 0.3}), ("fast-dllm", {"cache": "prefix"}),
                          ("fast-dllm", {"factor": 1.0}), ("window", {"window": 16, "active": 4, "refresh": 8}),
                          ("window", {"threshold": 0.5}), ("adablock", {"block_length": 8}),
                          ("llada", {"confidence": "entropy", "block_length": 8})]:
        out = generate(model, PROMPT, name, 32, delimiter_id=WORDS.index("\n"), **options)
        assert sorted(i for step in out.stats.order for i in step) == list(range(32)), (name, options)
        assert out.stats.positions == sum(out.stats.per_step)
    dual = generate(model, PROMPT, "fast-dllm", 32, cache="dual", threshold=1.0, block_length=8)
    assert dual.stats.positions < base.stats.positions


def test_dream_reads_logits_one_position_back(checkpoints):
    """The decoders read Dream's prediction for position p from its output at p - 1."""
    _, model = checkpoints["dream"]
    out = generate(model, PROMPT, "llada", 8, block_length=8, steps=1 * 8)
    x = torch.tensor([PROMPT + [MASK] * 8])
    with torch.no_grad():
        logits = model(x)[0]
    logits[:, MASK] = -float("inf")
    first = out.stats.order[0][0]
    assert int(out.tokens[first]) == int(logits[len(PROMPT) + first - 1].argmax())


def test_bad_checkpoints(checkpoints, tmp_path):
    folder, model = checkpoints["llada"]
    other = tmp_path / "qwen"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                   "vocab_size": 48, "hidden_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "intermediate_size": 48}))
    with pytest.raises(ValueError, match="not a masked-diffusion LM"):
        load_text_model(str(other))
    with pytest.raises(ValueError, match="unknown rope_scaling type 'yarn'; allowed: default, linear"):
        dream_config(DREAM_CONFIG | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, MASK)
    with pytest.raises(ValueError, match="block_type='sequential' is not supported"):
        llada_config(LLADA_CONFIG | {"block_type": "sequential"}, MASK)
    nomask = tmp_path / "nomask"
    nomask.mkdir()
    (nomask / "config.json").write_text(json.dumps({k: v for k, v in LLADA_CONFIG.items() if k != "mask_token_id"}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(nomask / "model.safetensors"))
    with pytest.raises(ValueError, match="mask token: pass mask_id"):
        load_text_model(str(nomask))
    assert load_text_model(str(nomask), mask_id=5)[0].mask_id == 5
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps(LLADA_CONFIG | {"n_layers": 3}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wrong / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match a LLaDAModel"):
        load_text_model(str(wrong))
    with pytest.raises(ValueError, match="context of 96 tokens"):
        generate(model, PROMPT, "llada", 96)


def test_text_command_on_a_llada_folder(checkpoints):
    folder, _ = checkpoints["llada"]
    runner = CliRunner()
    r = runner.invoke(app, ["text", "c o u n t", "--model", str(folder), "--gen-length", "32", "--decoder",
                            "fast-dllm:cache=dual", "--eos-stop"])
    assert r.exit_code == 0, r.output
    assert "fast-dllm:" in r.output
    r = runner.invoke(app, ["text", "c o u n t", "--model", str(folder), "--gen-length", "512"])
    assert r.exit_code == 2 and "context" in r.output and "Traceback" not in r.output


def test_window_frozen_plan_keeps_the_phase_key_set(checkpoints):
    """plan="frozen" (Window-Diffusion's released loop, matched token for token in docs/dllm.md): every pruned
    forward of a phase attends to the key set fixed at its start; "sliding" widens it as tokens are decoded. At a
    refresh of 2 (one pruned step per phase) the two plans are the same decoder."""
    _, model = checkpoints["llada"]
    seen = []
    forward = model.forward

    def spy(ids, positions=None, cache=None, keys=None):
        seen.append(None if keys is None else keys.tolist())
        return forward(ids, positions, cache, keys)

    model.forward = spy
    try:
        frozen = generate(model, PROMPT, "window", 32, window=8, active=4, refresh=8, plan="frozen")
        phases = [seen[i + 1:i + 8] for i in range(0, len(seen), 8)]
        assert all(k == ks[0] for ks in phases for k in ks) and len(phases) == 4
        seen.clear()
        generate(model, PROMPT, "window", 32, window=8, active=4, refresh=8, plan="sliding")
        assert seen[2] != seen[1]
    finally:
        del model.forward
    assert sorted(i for step in frozen.stats.order for i in step) == list(range(32))
    a = generate(model, PROMPT, "window", 32, window=8, active=4, refresh=2, plan="frozen")
    b = generate(model, PROMPT, "window", 32, window=8, active=4, refresh=2, plan="sliding")
    assert torch.equal(a.tokens, b.tokens) and a.stats.order == b.stats.order


def test_bench_command_on_a_dream_folder(checkpoints, tmp_path):
    folder, _ = checkpoints["dream"]
    out = tmp_path / "rows.json"
    r = CliRunner().invoke(app, ["bench", "dllm", "--model", str(folder), "--prompts", "1", "--gen-length", "32",
                                 "--decoders", "llada,fast-dllm:cache=dual,window:window=16:threshold=0.5",
                                 "--json", str(out), "--allow-dirty"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["decoder"] for row in rows] == ["llada", "fast-dllm:cache=dual", "window:window=16:threshold=0.5"]
    assert rows[0]["nfe"] == 32 and rows[1]["positions"] < rows[0]["positions"]  # the dual cache computes less
