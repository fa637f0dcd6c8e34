"""Batched decoding (batch 8 gives batch 1's tokens on the built-in model), Fast-dLLM's factor rule, Dream's
entropy confidence and EOS early stop, each against a hand-computed answer."""

import math

import pytest
import torch

from accel.dllm import generate
from accel.dllm.decode import _factor_pick, _score
from accel.dllm.models import load_text_model
from accel.dllm.task import VOCAB, problem_set
from accel.pipelines.mdlm import CharTokenizer, MDLMConfig

TOK = CharTokenizer(list(VOCAB))


@pytest.fixture(scope="module")
def builtin():
    return load_text_model("counting")


@pytest.mark.parametrize("decoder, options", [
    ("llada", {"block_length": 32}),
    ("fast-dllm", {"cache": "dual"}), ("fast-dllm", {"cache": "prefix"}), ("fast-dllm", {"cache": "none"}),
    ("fast-dllm", {"cache": "dual", "threshold": 0.5}), ("fast-dllm", {"factor": 1.0}),
    ("window", {"window": 32, "threshold": 0.9}),
])
def test_batch_of_8_gives_the_tokens_of_batch_1(builtin, decoder, options):
    model, tok = builtin
    prompts = [tok.prompt_ids(p.prompt) for p in problem_set(8, seed=7)]
    batch = generate(model, prompts, decoder, 64, **options)
    assert batch.tokens.shape == (8, 64)
    for i, prompt in enumerate(prompts):
        one = generate(model, prompt, decoder, 64, **options)
        assert torch.equal(batch.tokens[i], one.tokens), (decoder, options, i)
        assert batch.stats.orders[i] == one.stats.order
    assert not bool((batch.tokens == model.mask_id).any())


def test_batch_prompts_of_different_lengths_are_refused(builtin):
    model, tok = builtin
    with pytest.raises(ValueError, match="same length"):
        generate(model, [tok.prompt_ids("count 137 by 7"), tok.prompt_ids("count 137 by 7")[:-1]], "llada", 32)


def test_factor_rule_by_hand():
    prob = torch.tensor([0.99, 0.95, 0.70, 0.90, 0.999])
    allowed = torch.tensor([True, True, True, True, False])
    # sorted allowed: 0.99, 0.95, 0.90, 0.70; bounds 1 - 1/(n+1): (any), 0.667, 0.75, 0.8 -> the first three
    assert sorted(_factor_pick(prob, allowed, 1.0).tolist()) == [0, 1, 3]
    assert _factor_pick(prob, allowed, 0.01).tolist() == [0]  # at least the most confident one
    assert sorted(_factor_pick(prob, allowed, 2.0).tolist()) == [0, 1, 2, 3]  # 0.70 >= 1 - 2/5


def test_entropy_and_margin_confidence_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]]))
    prob = torch.tensor([[0.5, 0.9]])
    neg_entropy = _score(logits, prob, "entropy")[0]
    expected = [0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25), 0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05)]
    assert torch.allclose(neg_entropy, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(_score(logits, prob, "margin")[0], torch.tensor([0.25, 0.85]), atol=1e-6)


class _Oracle(torch.nn.Module):
    """Certain of a fixed target (an EOS at answer index 5), equally so everywhere."""

    config = MDLMConfig(vocab_size=len(TOK), mask_id=TOK.mask_id, max_len=128)
    mask_id = TOK.mask_id

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.w = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch, length):
        return None

    def forward(self, ids, positions=None, cache=None, keys=None):
        positions = torch.arange(ids.shape[1]) if positions is None else positions
        logits = torch.nn.functional.one_hot(self.target[positions], len(TOK)).float()[None] * 5
        return logits.expand(ids.shape[0], -1, -1)


def test_eos_early_stop():
    prompt = TOK.prompt_ids("count 137 by 7")
    answer = (TOK.encode("137,14") + [TOK.eos_id] + TOK.encode("4,151,158\n165,172,179,186\n19"))[:32]
    model = _Oracle(torch.tensor(prompt + answer))
    full = generate(model, prompt, "llada", 32, block_length=32)
    stop = generate(model, prompt, "llada", 32, block_length=32, eos_id=TOK.eos_id)
    assert torch.equal(full.tokens, torch.tensor(answer))
    # all equally confident: commits go left to right, so the EOS at index 6 ends the answer after 7 forwards
    assert stop.tokens.tolist() == answer[:7] + [TOK.eos_id] * 25
    assert stop.stats.nfe == 7 < full.stats.nfe == 32
    fast = generate(model, prompt, "fast-dllm", 32, block_length=8, threshold=0.5, eos_id=TOK.eos_id)
    # one forward commits the whole first block, EOS and the token after it included: the answer still ends at EOS
    assert fast.tokens.tolist() == stop.tokens.tolist() and fast.stats.nfe == 1
