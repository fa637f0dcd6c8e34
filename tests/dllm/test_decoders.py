"""Decoders of masked-diffusion LMs: agreements the papers' constructions imply, accounting, bad input."""

import pytest
import torch

from accel.dllm import generate, get_decoder
from accel.dllm.bench import parse_decoder
from accel.dllm.task import VOCAB, Problem, answer, parse_prompt, problem_set, score
from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM, MDLMConfig, masked_diffusion_loss

TOK = CharTokenizer(list(VOCAB))
NL = TOK.index["\n"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MaskedDiffusionLM(MDLMConfig(vocab_size=len(TOK), mask_id=TOK.mask_id, dim=32, layers=2, heads=2,
                                     max_len=128))
    with torch.no_grad():  # a sharper random model: confidences spread out, so decoding order is informative
        m.head.weight.mul_(20)
    return m.eval()


PROMPT = TOK.prompt_ids("count 137 by 7")


def test_subset_forward_with_cache_equals_full_forward(model):
    ids = torch.tensor([PROMPT + TOK.encode(answer(Problem(137, 7), 48))])
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, ids.shape[1])
        assert torch.allclose(model(ids, cache=cache), full, atol=1e-5)
        pos = torch.tensor([3, 9, 10, 40])
        assert torch.allclose(model(ids[:, pos], positions=pos, cache=cache), full[:, pos], atol=1e-5)
        # Pruning keys changes the result (the far field is really left out).
        keys = torch.arange(20)
        assert not torch.allclose(model(ids[:, pos], positions=pos, cache=cache, keys=keys), full[:, pos], atol=1e-3)


def test_cache_refresh_overwrites_stale_entries(model):
    a = torch.tensor([PROMPT + TOK.encode(answer(Problem(5, 2), 32))])
    b = torch.tensor([PROMPT + TOK.encode(answer(Problem(998, 9), 32))])
    with torch.no_grad():
        stale = model.new_cache(1, a.shape[1])
        model(a, cache=stale)
        model(b, cache=stale)  # refresh: a full forward rewrites every layer's K/V
        fresh = model.new_cache(1, b.shape[1])
        model(b, cache=fresh)
    for k_stale, k_fresh in zip(stale.k + stale.v, fresh.k + fresh.v):
        assert torch.equal(k_stale, k_fresh)


def test_threshold_one_is_the_baseline_order(model):
    base = generate(model, PROMPT, "llada", 64, block_length=32)
    fast = generate(model, PROMPT, "fast-dllm", 64, block_length=32, threshold=1.0, cache="none")
    assert base.stats.order == fast.stats.order and torch.equal(base.tokens, fast.tokens)
    assert all(len(step) == 1 for step in base.stats.order)


def test_window_covering_everything_with_refresh_every_step_is_no_caching(model):
    base = generate(model, PROMPT, "llada", 64, block_length=64)
    window = generate(model, PROMPT, "window", 64, window=64, active=16, refresh=1)
    assert window.stats.order == base.stats.order and torch.equal(window.tokens, base.tokens)


def test_cached_decoders_compute_fewer_positions(model):
    seq = len(PROMPT) + 64
    base = generate(model, PROMPT, "llada", 64)
    assert base.stats.nfe == 64 and base.stats.positions == 64 * seq
    for name, options in [("fast-dllm", {}), ("fast-dllm", {"cache": "prefix"}), ("window", {}),
                          ("adablock", {})]:
        out = generate(model, PROMPT, name, 64, delimiter_id=NL, **options)
        assert not bool((out.tokens == TOK.mask_id).any()), name  # every position decoded
        assert sorted(i for step in out.stats.order for i in step) == list(range(64)), name
        assert out.stats.positions < base.stats.positions, name
        assert out.stats.positions == sum(out.stats.per_step) and out.stats.nfe == len(out.stats.per_step)
    prefix = generate(model, PROMPT, "fast-dllm", 64, cache="prefix", threshold=1.0)
    dual = generate(model, PROMPT, "fast-dllm", 64, cache="dual", threshold=1.0)
    assert dual.stats.positions < prefix.stats.positions  # the dual cache computes the block only


def test_window_prunes_the_far_field(model):
    out = generate(model, PROMPT, "window", 64, window=16, active=8, refresh=16)
    seq = len(PROMPT) + 64
    full = [n for n in out.stats.per_step if n == seq]
    assert len(full) == 4  # one full forward per phase
    assert max(n for n in out.stats.per_step if n != seq) <= 8 + 16  # active + post-decode transient


def test_adablock_ends_blocks_at_confident_delimiters():
    """A model that is certain of the task's answer: blocks end at the predicted newlines (lines of 16)."""
    target = torch.tensor(PROMPT + TOK.encode(answer(parse_prompt("count 137 by 7"), 64)))

    class Oracle(torch.nn.Module):
        config = MDLMConfig(vocab_size=len(TOK), mask_id=TOK.mask_id, max_len=128)
        mask_id = TOK.mask_id

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def new_cache(self, batch, length):
            return None

        def forward(self, ids, positions=None, cache=None, keys=None):
            positions = torch.arange(ids.shape[1]) if positions is None else positions
            return torch.nn.functional.one_hot(target[positions], len(TOK)).float()[None] * 10

    out = generate(Oracle(), PROMPT, "adablock", 64, delimiter_id=NL, threshold=0.99)
    assert TOK.decode(out.tokens) == answer(parse_prompt("count 137 by 7"), 64)
    assert out.stats.nfe == 4  # one block per line, each decoded in its first forward


@pytest.mark.parametrize("kwargs, match", [
    ({"decoder": "greedy"}, "allowed"),
    ({"decoder": "llada", "gen_length": 40}, "multiple of block_length"),
    ({"decoder": "llada", "gen_length": 64, "steps": 47}, "multiple of the number of blocks"),
    ({"decoder": "fast-dllm", "gen_length": 200}, "context"),
    ({"decoder": "fast-dllm", "threshold": 1.5}, "threshold"),
    ({"decoder": "fast-dllm", "cache": "none-at-all"}, "cache"),
    ({"decoder": "window", "active": 32, "window": 16}, "active"),
    ({"decoder": "window", "bogus": 1}, "allowed"),
    ({"decoder": "window", "plan": "frozen", "threshold": 0.9}, "one token per step"),
    ({"decoder": "window", "plan": "fixed"}, "allowed: sliding, frozen"),
    ({"decoder": "fast-dllm", "factor": 0}, "factor"),
    ({"decoder": "llada", "confidence": "logit"}, "allowed: prob, entropy, margin"),
    ({"decoder": "adablock"}, "delimiter_id"),
])
def test_bad_input(model, kwargs, match):
    kwargs = {"gen_length": 64} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(model, PROMPT, **kwargs)


def test_bad_prompt(model):
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, [], "llada", 32)
    for bad in ("count 12 by 1", "count 137 by 0", "fib 3 1 4", "count 137 7"):
        with pytest.raises(ValueError, match="count SSS by K"):
            parse_prompt(bad)


def test_decoder_specs():
    assert parse_decoder("window:window=32:refresh=8") == get_decoder("window", window=32, refresh=8)
    assert parse_decoder("fast-dllm:threshold=0.5:cache=prefix").cache == "prefix"
    with pytest.raises(ValueError, match="key=value"):
        parse_decoder("window:32")


def test_task_and_loss(model):
    assert len(problem_set(5, 0)) == 5 and problem_set(5, 0) == problem_set(5, 0)
    text = answer(Problem(990, 4), 32)
    assert text == "990,994,998,002\n006,010,014,018\n"  # wraps mod 1000, four numbers per line
    assert len(TOK.encode(text)) == 32
    assert score(text, Problem(990, 4), 32) == (True, 1.0)
    assert score(text[:-2] + "9\n", Problem(990, 4), 32)[0] is False
    ids = torch.tensor([PROMPT + TOK.encode(text)])
    loss = masked_diffusion_loss(model, ids, len(PROMPT), torch.Generator().manual_seed(0), prefix_fraction=0.5)
    assert torch.isfinite(loss) and loss > 0


def test_window_lookahead_computes_fresh_right_context_but_commits_in_the_frontier(model):
    """With a threshold, each pruned step computes the first active + lookahead masks and commits only among the
    first `active` (the phase start too); without a threshold the default is none (the paper's setting) and an
    explicit lookahead computes the extra masks without committing them."""
    out = generate(model, PROMPT, "window", 64, window=64, active=4, lookahead=8, threshold=0.2, refresh=64)
    masked = list(range(64))
    for step, committed in enumerate(out.stats.order):
        assert set(committed) <= set(masked[:4]), step
        if step > 0 and len(masked) >= 12:  # pruned: 4 + 8 masks, plus the phase's decoded tokens, computed
            assert out.stats.per_step[step] >= 12
        masked = [i for i in masked if i not in committed]
    one = generate(model, PROMPT, "window", 64, window=32, active=8, refresh=16)
    same = generate(model, PROMPT, "window", 64, window=32, active=8, refresh=16, lookahead=0)
    assert one.stats.order == same.stats.order and one.stats.per_step == same.stats.per_step
    ahead = generate(model, PROMPT, "window", 64, window=32, active=8, refresh=16, lookahead=8)
    masked = list(range(64))
    for step, committed in enumerate(ahead.stats.order):
        assert len(committed) == 1, step
        if step % 16 and len(masked) >= 16:  # a pruned step: commits among the first 8, computes 8 + 8 masks
            assert committed[0] in masked[:8] and ahead.stats.per_step[step] >= 16, step
        masked = [i for i in masked if i not in committed]
    with pytest.raises(ValueError, match="lookahead"):
        generate(model, PROMPT, "window", 64, lookahead=-1)
