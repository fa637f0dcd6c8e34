"""Decoders for masked-diffusion language models, behind one `generate(...)`.

All decoders start from `[prompt, <mask> x gen_length]` and commit tokens (never re-masked) until none is masked,
greedily (the argmax token; its softmax probability is the confidence, from accel.kernels.confidence_argmax):

- `llada` (LLaDAConfig): the reference decoder of LLaDA's generate.py: semi-autoregressive blocks of
  `block_length`; `steps` full forwards in all; each step commits the k most confident masked tokens of the current
  block, k from the linear schedule. No cache.
- `fast-dllm` (FastDLLMConfig): Fast-dLLM's confidence-aware parallel decoding (every masked token of the block
  whose confidence exceeds `threshold`, at least the most confident one) with a block-wise approximate KV cache:
  "dual" (a full forward at each block start fills the cache; the other steps compute only the block's positions
  against the cached K/V of prefix and suffix), "prefix" (the steps compute the block and everything after it
  against the cached prefix) or "none".
- `window` (WindowConfig): Window-Diffusion: phases of `refresh` steps; a phase starts with a full forward that
  refreshes every layer's K/V and decodes by the standard rule over the whole generation region; inside a phase
  only the active tokens (the first `active` masked positions, plus every token committed in this phase: the
  post-decode transient) are computed, attending to the window (prompt, decoded tokens and the first `window`
  masked positions; the buffer's K/V are those of the phase start); masked positions beyond the window (the far
  field) are pruned from attention. One token per step as in the paper, or `threshold` for parallel commits.
- `adablock` (AdaBlockConfig): AdaBlock-dLLM: at each block start (the first masked position) a full forward looks
  ahead min(gen_length / 4, remaining) positions for a predicted delimiter; the most confident one, if its
  confidence reaches `delimiter_threshold`, ends the block (inclusive), else the block is `block_length`; the block
  is decoded with Fast-dLLM's threshold rule and cache.

NFE counts model forwards (of any number of positions); `positions` counts token-forwards, the compute measure
the caches reduce.

Shared options: `confidence` ranks candidates for the top-k rules ("prob": the argmax's probability, LLaDA's;
"entropy": the negative entropy of the distribution, Dream's alg="entropy"; "margin": top-1 minus top-2
probability); thresholds always compare the probability (as Fast-dLLM's for both models). Fast-dLLM's `factor`
replaces its threshold by the factor-based rule (commit the longest run of the most confident tokens whose n-th
confidence is at least 1 - factor / (n + 1)).

Batches: prompts (B, P) of one length decode together; every sample keeps its own masks and commit counts.
`llada` and `fast-dllm` run the batch through each forward (a sample whose block is done waits for the others;
its extra forwards write only K/V that the next block's full forward rewrites, so each sample's tokens are those
of decoding it alone). `window` and `adablock` choose positions per sample (windows, block ends), so they decode
the samples one after another. Prompts of different lengths are refused (left padding would shift the rotary
positions of a sample against its batch-1 decoding).

Models whose logits at i predict token i + 1 (Dream: `model.logits_shift == 1`) are read one position back: a
forward that must predict positions `pos` computes `pos` and `pos - 1`.

EOS early stop (`eos_id=`): once a sample commits the end-of-sequence token at answer index e, every position
after e becomes that token (masks there are never computed again; tokens committed after e in the same step are
overwritten): Window-Diffusion's adaptive length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Union

import torch

from accel.config import check_choice
from accel.kernels import confidence_argmax


@dataclass(frozen=True)
class LLaDAConfig:
    """block_length: semi-autoregressive block; steps: forwards in all (None: gen_length, one token per step)."""

    name: ClassVar[str] = "llada"
    block_length: int = 32
    steps: int | None = None
    confidence: str = "prob"

    def __post_init__(self):
        _check_int("block_length", self.block_length)
        _check_int("steps", self.steps, optional=True)
        check_choice("confidence", self.confidence, CONFIDENCES)


@dataclass(frozen=True)
class FastDLLMConfig:
    """threshold: commit every masked token of the block above it (at least one per step); factor: instead,
    Fast-dLLM's factor-based rule (None: the threshold rule); cache: "dual", "prefix" or "none"; block_length as
    LLaDA's (Fast-dLLM's default 32)."""

    name: ClassVar[str] = "fast-dllm"
    block_length: int = 32
    threshold: float = 0.9
    cache: str = "dual"
    factor: float | None = None
    confidence: str = "prob"

    def __post_init__(self):
        _check_int("block_length", self.block_length)
        _check_threshold(self.threshold)
        check_choice("cache", self.cache, CACHES)
        check_choice("confidence", self.confidence, CONFIDENCES)
        if self.factor is not None and (not isinstance(self.factor, (int, float)) or isinstance(self.factor, bool)
                                        or self.factor <= 0):
            raise ValueError(f"factor must be a number > 0 or None, got {self.factor!r}")


LOOKAHEAD = 16  # the threshold variant's default lookahead (chosen on seeds 1-5, checked on 6-10: docs/dllm.md)


@dataclass(frozen=True)
class WindowConfig:
    """window: masked positions attended beyond the decoded ones (W, the paper's 64); active: masked positions
    computed per step (A, 16); refresh: steps per phase (R, 32); threshold: None for one token per step (the
    paper), or commit every active masked token above it (at least one); lookahead: that many masked positions
    after the active ones are computed too (fresh right context for the commits, never committed in that step;
    None: LOOKAHEAD with a threshold, 0 without, the paper's setting); plan: "sliding" (the key set and the
    post-decode transient recomputed every step, all of the phase's commits transient) or "frozen" (Window-Diffusion's
    released code: the key set fixed at the phase start, the phase-start commit active for one step only; one token
    per step only)."""

    name: ClassVar[str] = "window"
    window: int = 64
    active: int = 16
    refresh: int = 32
    threshold: float | None = None
    confidence: str = "prob"
    plan: str = "sliding"
    lookahead: int | None = None

    @property
    def ahead(self) -> int:
        """The masked positions computed after the active ones: `lookahead`, or its default for the setting."""
        if self.lookahead is not None:
            return self.lookahead
        return LOOKAHEAD if self.threshold is not None else 0

    def __post_init__(self):
        check_choice("confidence", self.confidence, CONFIDENCES)
        check_choice("plan", self.plan, ("sliding", "frozen"))
        _check_int("lookahead", self.lookahead, optional=True, minimum=0)
        _check_int("window", self.window)
        _check_int("active", self.active)
        _check_int("refresh", self.refresh)
        if self.active > self.window:
            raise ValueError(f"active ({self.active}) must not exceed window ({self.window})")
        if self.threshold is not None:
            _check_threshold(self.threshold)
            if self.plan == "frozen":
                # Measured: parallel commits move the frontier out of a key set fixed at the phase start, and the
                # active tokens then attend to neither themselves nor their neighbours (exact match 0.0 on the
                # built-in model, gen 256, window 64). The released code commits one token per step.
                raise ValueError("plan='frozen' (the released code's plan) commits one token per step: with a "
                                 "threshold use plan='sliding'")


@dataclass(frozen=True)
class AdaBlockConfig:
    """block_length: the fallback block; delimiter: the delimiter token text (newline); delimiter_threshold: the
    confidence a predicted delimiter needs to end a block (LLaDA's 0.3); threshold and cache: Fast-dLLM's."""

    name: ClassVar[str] = "adablock"
    block_length: int = 32
    delimiter: str = "\n"
    delimiter_threshold: float = 0.3
    threshold: float = 0.9
    cache: str = "dual"
    confidence: str = "prob"

    def __post_init__(self):
        check_choice("confidence", self.confidence, CONFIDENCES)
        _check_int("block_length", self.block_length)
        _check_threshold(self.delimiter_threshold, "delimiter_threshold")
        _check_threshold(self.threshold)
        check_choice("cache", self.cache, CACHES)


CACHES = ("dual", "prefix", "none")
CONFIDENCES = ("prob", "entropy", "margin")
DecoderConfig = Union[LLaDAConfig, FastDLLMConfig, WindowConfig, AdaBlockConfig]
DECODERS: dict[str, type] = {c.name: c for c in (LLaDAConfig, FastDLLMConfig, WindowConfig, AdaBlockConfig)}


def _check_int(name, value, optional=False, minimum=1):
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}")


def _check_threshold(value, name="threshold"):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def get_decoder(decoder: str | DecoderConfig, **options) -> DecoderConfig:
    """A decoder config from its name (with options) or the config itself."""
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; allowed: {', '.join(DECODERS)}")
        try:
            return DECODERS[decoder](**options)
        except TypeError:
            fields = DECODERS[decoder].__dataclass_fields__
            raise ValueError(f"unknown option for {decoder}: {', '.join(sorted(set(options) - set(fields)))}; "
                             f"allowed: {', '.join(fields)}") from None
    if isinstance(decoder, tuple(DECODERS.values())):
        if options:
            raise ValueError("pass options either in the config or as keywords with a decoder name, not both")
        return decoder
    raise ValueError(f"decoder must be a name ({', '.join(DECODERS)}) or a decoder config, got {decoder!r}")


@dataclass
class DecodeStats:
    """nfe: model forwards; positions: token-forwards (sum over forwards of the positions computed, over the
    batch's rows counted once); seconds; tokens_per_s: batch * gen_length / seconds; per_step: positions
    computed by each forward; orders: per sample, the answer indices committed by each of its commit steps, in
    commit order (`order` is sample 0's)."""

    nfe: int = 0
    positions: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    per_step: list[int] = field(default_factory=list)
    orders: list[list[list[int]]] = field(default_factory=list)

    @property
    def order(self) -> list[list[int]]:
        return self.orders[0]


@dataclass
class Generation:
    """tokens: (gen_length,) the answer's token ids for one prompt, (B, gen_length) for a batch; stats:
    DecodeStats."""

    tokens: torch.Tensor
    stats: DecodeStats


class _State:
    """The batch being decoded (x: (B, P + gen_length)), the cache and the meter."""

    def __init__(self, model, prompt: torch.Tensor, gen_length: int, confidence: str, eos_id: int | None):
        self.model, self.p, self.n = model, prompt.shape[1], gen_length
        self.b = prompt.shape[0]
        mask = torch.full((self.b, gen_length), model.mask_id, dtype=torch.long, device=prompt.device)
        self.x = torch.cat([prompt.to(torch.long), mask], dim=1)
        self.stats = DecodeStats(orders=[[] for _ in range(self.b)])
        self.cache = None
        self.shift = int(getattr(model, "logits_shift", 0))
        self.confidence, self.eos_id = confidence, eos_id

    @property
    def masked(self) -> torch.Tensor:
        """(B, gen_length) bool: which answer positions are still masked."""
        return self.x[:, self.p:] == self.model.mask_id

    def forward(self, positions: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                fill_cache: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prob, token, score), each (B, n'), for the answer positions computed: all of them for a full forward
        (positions None), else the given absolute positions. prob: the argmax token's probability; score: the
        ranking confidence (config.confidence). fill_cache: a full forward that also (re)writes every K/V."""
        m = self.model
        if positions is None:
            if fill_cache:
                self.cache = m.new_cache(self.b, self.x.shape[1])
            logits = m(self.x, cache=self.cache if fill_cache else None)
            if self.shift:  # logits[i] predicts token i + 1: align them with the token they predict
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            logits, count = logits[:, self.p:], self.x.shape[1]
        else:
            query = torch.unique(torch.cat([positions - 1, positions])) if self.shift else positions
            logits = m(self.x[:, query], positions=query, cache=self.cache, keys=keys)
            if self.shift:
                logits = logits[:, torch.searchsorted(query, positions - 1)]
            count = query.numel()
        self.stats.nfe += 1
        self.stats.positions += count
        self.stats.per_step.append(count)
        logits = logits.float()
        score = None if self.confidence == "prob" else _score(logits, None, self.confidence)
        # The confidence is the token's probability under the full softmax, as the official decoders compute it;
        # the token is the argmax over every other token: a mask is never "decoded" (it would never finish).
        p_mask = torch.exp(logits[..., m.mask_id] - torch.logsumexp(logits, dim=-1))
        logits[..., m.mask_id] = -float("inf")
        prob, token = confidence_argmax(logits)
        prob = prob * (1 - p_mask)
        return prob, token, prob if score is None else score

    def commit(self, row: int, index: torch.Tensor, token: torch.Tensor) -> None:
        """Write tokens of sample `row` at answer indices (0..gen_length-1); with eos_id, the answer ends at its
        first committed EOS: every position after it becomes EOS (masks are never computed again)."""
        self.x[row, self.p + index] = token
        self.stats.orders[row].append(index.tolist())
        if self.eos_id is not None and bool((token == self.eos_id).any()):
            answer = self.x[row, self.p:]
            first = int(torch.nonzero((answer == self.eos_id))[0])
            answer[first + 1:] = self.eos_id


def _score(logits: torch.Tensor, prob: torch.Tensor | None, kind: str) -> torch.Tensor:
    """The ranking confidence (B, n) of each position's argmax: its probability, the distribution's negative
    entropy (Dream's formula: sum p log(p + 1e-10)), or the top-1 minus top-2 probability."""
    if kind == "prob":
        return prob
    probs = torch.softmax(logits, dim=-1)
    if kind == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(-1)
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def _top(score: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best-scored allowed entries of one sample (ties: lower index first; never more than the
    allowed count)."""
    k = min(k, int(allowed.sum()))
    scores = torch.where(allowed, score.double(), torch.tensor(-float("inf"), dtype=torch.float64))
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def _threshold_pick(prob: torch.Tensor, score: torch.Tensor, allowed: torch.Tensor, threshold: float) -> torch.Tensor:
    """One sample's allowed indices with prob > threshold, or the best-scored allowed one if none is."""
    above = torch.nonzero(allowed & (prob > threshold)).flatten()
    return above if above.numel() else _top(score, allowed, 1)


def _factor_pick(prob: torch.Tensor, allowed: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor-based rule for one sample: sort the allowed probabilities c_(1) >= c_(2) >= ...; commit
    the longest prefix whose every c_(n) >= 1 - factor / (n + 1) (at least the top one).

    Deviation: Fast-dLLM's get_transfer_index_dynamic also commits all of them when only the last one fails its
    bound (an off-by-one in its loop); here that one stays masked, as the rule says."""
    order = _top(prob, allowed, int(allowed.sum()))
    c = prob[order].double()
    n = torch.arange(1, c.numel() + 1, dtype=torch.float64, device=c.device)
    ok = c >= 1 - factor / (n + 1)
    ok[0] = True
    bad = torch.nonzero(~ok).flatten()
    return order[: int(bad[0]) if bad.numel() else c.numel()]


def _rows(s: _State, lo: int = 0, hi: int | None = None):
    """The samples with masked answer positions in [lo, hi)."""
    masked = s.masked[:, lo:hi]
    return [b for b in range(s.b) if bool(masked[b].any())]


def _llada(s: _State, c: LLaDAConfig) -> None:
    steps = c.steps if c.steps is not None else s.n
    blocks = s.n // c.block_length
    if steps % blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({blocks} = gen_length / "
                         f"block_length)")
    per_block = steps // blocks
    for b in range(blocks):
        lo, hi = b * c.block_length, (b + 1) * c.block_length
        m = s.masked[:, lo:hi].sum(1).tolist()  # per sample (equal unless EOS filled some)
        counts = [[mb // per_block + (j < mb % per_block) for j in range(per_block)] for mb in m]  # linear schedule
        for j in range(per_block):
            rows = [r for r in _rows(s, lo, hi) if counts[r][j] > 0]
            if not rows:
                continue
            _, token, score = s.forward()
            for r in rows:
                pick = _top(score[r, lo:hi], s.masked[r, lo:hi], counts[r][j])
                s.commit(r, pick + lo, token[r, lo:hi][pick])


def _pick_block(s: _State, c, lo: int, hi: int, prob, token, score, rows) -> None:
    """Each listed sample commits in [lo, hi) by the config's rule (threshold or factor) from this forward's
    (prob, token, score) over [lo, hi)."""
    factor = getattr(c, "factor", None)
    for r in rows:
        allowed = s.masked[r, lo:hi]
        pick = (_factor_pick(prob[r], allowed, factor) if factor is not None
                else _threshold_pick(prob[r], score[r], allowed, c.threshold))
        s.commit(r, pick + lo, token[r][pick])


def _fast_dllm(s: _State, c: FastDLLMConfig) -> None:
    for lo in range(0, s.n, c.block_length):
        hi = lo + c.block_length
        rows = _rows(s, lo, hi)
        if not rows:  # EOS filled the block
            continue
        prob, token, score = s.forward(fill_cache=c.cache != "none")
        _pick_block(s, c, lo, hi, prob[:, lo:hi], token[:, lo:hi], score[:, lo:hi], rows)
        _continue_block(s, c, lo, hi)


def _continue_block(s: _State, c, lo: int, hi: int) -> None:
    """Threshold decoding of [lo, hi) after the block's first (full) forward, which already filled the cache."""
    while rows := _rows(s, lo, hi):
        if c.cache == "none":
            prob, token, score = s.forward()
            prob, token, score = prob[:, lo:hi], token[:, lo:hi], score[:, lo:hi]
        else:
            end = hi if c.cache == "dual" else s.n
            prob, token, score = s.forward(torch.arange(s.p + lo, s.p + end, device=s.x.device))
            prob, token, score = prob[:, : hi - lo], token[:, : hi - lo], score[:, : hi - lo]
        _pick_block(s, c, lo, hi, prob, token, score, rows)


def _adablock(s: _State, c: AdaBlockConfig, delimiter_id: int) -> None:
    while bool(s.masked.any()):
        lo = int(torch.nonzero(s.masked[0])[0])
        prob, token, score = s.forward(fill_cache=c.cache != "none")
        prob, token, score = prob[0], token[0], score[0]
        look = min(max(s.n // 4, 1), s.n - lo)
        window_conf, window_tok = prob[lo:lo + look], token[lo:lo + look]
        is_delim = (window_tok == delimiter_id) & s.masked[0, lo:lo + look]
        size = c.block_length
        if bool(is_delim.any()):
            best = int(torch.where(is_delim, window_conf, torch.zeros_like(window_conf)).argmax())
            if float(window_conf[best]) >= c.delimiter_threshold:
                size = best + 1
        hi = min(lo + size, s.n)
        # The block start's forward is reused for the block's first commit (AdaBlock step 1).
        _pick_block(s, c, lo, hi, prob[None, lo:hi], token[None, lo:hi], score[None, lo:hi], [0])
        _continue_block(s, c, lo, hi)


def _window(s: _State, c: WindowConfig) -> None:
    step = 0
    device = s.x.device
    prompt_pos = torch.arange(s.p, device=device)
    phase_committed: list[int] = []
    frozen_keys = None
    while bool(s.masked.any()):
        masked = s.masked[0]
        if step % c.refresh == 0:
            # Phase start: full forward, every K/V refreshed, the standard rule over the whole answer.
            prob, token, score = (t[0] for t in s.forward(fill_cache=True))
            if c.threshold is not None:
                # Parallel commits stay in the frontier (the first `active` masked positions), as inside a phase:
                # a global threshold rule would commit confident far tokens before their context exists.
                masked = masked & (torch.cumsum(masked.long(), 0) <= c.active)
            pick = (_top(score, masked, 1) if c.threshold is None
                    else _threshold_pick(prob, score, masked, c.threshold))
            s.commit(0, pick, token[pick])
            phase_committed = pick.tolist()
            if c.plan == "frozen":  # the phase's keys: prompt, decoded tokens, the first `window` masks
                masked = s.masked[0]
                frozen_keys = torch.cat([prompt_pos, s.p + torch.nonzero(
                    ~masked | (torch.cumsum(masked.long(), 0) <= c.window)).flatten()])
        else:
            masked_idx = torch.nonzero(masked).flatten()
            # With parallel commits, `lookahead` more masks are computed as fresh right context: measured, the
            # threshold variant's wrong commits were confident tokens at the right edge of the active set, next to
            # masks whose K/V were those of the phase start; a full forward predicted them right (docs/dllm.md).
            active = torch.unique(torch.cat([masked_idx[:c.active + c.ahead],
                                             torch.tensor(phase_committed, dtype=torch.long, device=device)]))
            if c.plan == "frozen":
                keys = frozen_keys
            else:
                decoded = torch.nonzero(~masked).flatten()
                keys = torch.cat([prompt_pos, torch.unique(torch.cat([decoded, masked_idx[:c.window], active])) + s.p])
            prob, token, score = (t[0] for t in s.forward(active + s.p, keys=keys))
            allowed = masked[active] & (active <= masked_idx[:c.active][-1])  # commits among the first `active`
            pick = (_top(score, allowed, 1) if c.threshold is None
                    else _threshold_pick(prob, score, allowed, c.threshold))
            s.commit(0, active[pick], token[pick])
            if c.plan == "frozen" and step % c.refresh == 1:
                phase_committed = []  # the released code keeps the phase-start commit active for one step
            phase_committed += active[pick].tolist()
        step += 1


def _check_prompt(prompt) -> torch.Tensor:
    """(B, P) long ids from (P,), (B, P) or a list of equal-length lists; ValueError otherwise."""
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (list, tuple, torch.Tensor)):
        lengths = sorted({len(p) for p in prompt})
        if len(lengths) > 1:
            raise ValueError(f"batch prompts must have the same length (got lengths {lengths}); decode them in "
                             "separate calls or group them by length (left padding would shift their positions)")
    prompt = torch.as_tensor(prompt, dtype=torch.long)
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty (P,) or (B, P) tensor of token ids, got {tuple(prompt.shape)}")
    return prompt


@torch.no_grad()
def generate(model, prompt: torch.Tensor | list[int] | list[list[int]], decoder: str | DecoderConfig = "llada",
             gen_length: int = 256, delimiter_id: int | None = None, eos_id: int | None = None,
             **options) -> Generation:
    """Decode an answer of `gen_length` tokens for a prompt or a batch of prompts of one length.

    Args:
        model: a masked-diffusion LM with `mask_id`, `config.max_len`, `new_cache(batch, length)` and
            `forward(ids, positions=None, cache=None, keys=None) -> logits` (accel.pipelines.mdlm's model, the
            native LLaDA / Dream of accel.dllm.native, or an adapted checkpoint: accel.dllm.hf); optional
            `logits_shift` (1: logits at i predict token i + 1, as Dream's).
        prompt: token ids, (P,) for one prompt or (B, P) / a list of B equal-length lists for a batch.
        decoder: "llada", "fast-dllm", "window", "adablock" (options as keywords) or a decoder config.
        gen_length: answer tokens; a multiple of block_length for the block decoders.
        delimiter_id: the delimiter token for adablock (the CLI and the built-in model pass the newline's id).
        eos_id: stop a sample early once it commits this token (its later masks are filled with it).
    Returns:
        Generation(tokens (gen_length,) for a (P,) prompt, else (B, gen_length); stats).
    Raises:
        ValueError: unknown decoder or option, gen_length not a multiple of block_length, prompt + answer longer
            than the model's context, an empty prompt, batch prompts of different lengths.
    """
    config = get_decoder(decoder, **options)
    single = isinstance(prompt, torch.Tensor) and prompt.ndim == 1 or (
        isinstance(prompt, (list, tuple)) and not (prompt and isinstance(prompt[0], (list, tuple, torch.Tensor))))
    prompt = _check_prompt(prompt)
    _check_int("gen_length", gen_length)
    context = model.config.max_len
    if prompt.shape[1] + gen_length > context:
        raise ValueError(f"prompt ({prompt.shape[1]} tokens) + gen_length ({gen_length}) exceeds the model's context "
                         f"of {context} tokens")
    block = getattr(config, "block_length", None)
    if block is not None and config.name != "adablock" and gen_length % block:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block})")
    if config.name == "adablock" and delimiter_id is None:
        raise ValueError("adablock needs delimiter_id (the token id of its delimiter)")
    if config.name in ("window", "adablock") and prompt.shape[0] > 1:
        return _one_by_one(model, prompt, config, gen_length, delimiter_id, eos_id)
    device = next(model.parameters()).device
    state = _State(model, prompt.to(device), gen_length, config.confidence, eos_id)
    start = time.perf_counter()
    if config.name == "llada":
        _llada(state, config)
    elif config.name == "fast-dllm":
        _fast_dllm(state, config)
    elif config.name == "window":
        _window(state, config)
    else:
        _adablock(state, config, delimiter_id)
    stats = state.stats
    stats.seconds = time.perf_counter() - start
    stats.tokens_per_s = state.b * gen_length / stats.seconds if stats.seconds > 0 else float("inf")
    tokens = state.x[:, state.p:].cpu()
    return Generation(tokens[0] if single else tokens, stats)


def _one_by_one(model, prompt, config, gen_length, delimiter_id, eos_id) -> Generation:
    """A batch for the decoders whose positions are per sample: each sample alone, the stats summed."""
    outs = [generate(model, p, config, gen_length, delimiter_id=delimiter_id, eos_id=eos_id) for p in prompt]
    stats = DecodeStats(nfe=sum(o.stats.nfe for o in outs), positions=sum(o.stats.positions for o in outs),
                        seconds=sum(o.stats.seconds for o in outs),
                        per_step=[n for o in outs for n in o.stats.per_step],
                        orders=[o.stats.order for o in outs])
    stats.tokens_per_s = len(outs) * gen_length / stats.seconds if stats.seconds > 0 else float("inf")
    return Generation(torch.stack([o.tokens for o in outs]), stats)
