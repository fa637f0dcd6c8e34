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
the caches reduce. Batch size 1, as the papers' decoders.
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

    def __post_init__(self):
        _check_int("block_length", self.block_length)
        _check_int("steps", self.steps, optional=True)


@dataclass(frozen=True)
class FastDLLMConfig:
    """threshold: commit every masked token of the block above it (at least one per step); cache: "dual",
    "prefix" or "none"; block_length as LLaDA's (Fast-dLLM's default 32)."""

    name: ClassVar[str] = "fast-dllm"
    block_length: int = 32
    threshold: float = 0.9
    cache: str = "dual"

    def __post_init__(self):
        _check_int("block_length", self.block_length)
        _check_threshold(self.threshold)
        check_choice("cache", self.cache, CACHES)


@dataclass(frozen=True)
class WindowConfig:
    """window: masked positions attended beyond the decoded ones (W, the paper's 64); active: masked positions
    computed per step (A, 16); refresh: steps per phase (R, 32); threshold: None for one token per step (the
    paper), or commit every active masked token above it (at least one)."""

    name: ClassVar[str] = "window"
    window: int = 64
    active: int = 16
    refresh: int = 32
    threshold: float | None = None

    def __post_init__(self):
        _check_int("window", self.window)
        _check_int("active", self.active)
        _check_int("refresh", self.refresh)
        if self.active > self.window:
            raise ValueError(f"active ({self.active}) must not exceed window ({self.window})")
        if self.threshold is not None:
            _check_threshold(self.threshold)


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

    def __post_init__(self):
        _check_int("block_length", self.block_length)
        _check_threshold(self.delimiter_threshold, "delimiter_threshold")
        _check_threshold(self.threshold)
        check_choice("cache", self.cache, CACHES)


CACHES = ("dual", "prefix", "none")
DecoderConfig = Union[LLaDAConfig, FastDLLMConfig, WindowConfig, AdaBlockConfig]
DECODERS: dict[str, type] = {c.name: c for c in (LLaDAConfig, FastDLLMConfig, WindowConfig, AdaBlockConfig)}


def _check_int(name, value, optional=False):
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{' or None' if optional else ''}, got {value!r}")


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
    """nfe: model forwards; positions: token-forwards (sum over forwards of the positions computed); seconds;
    tokens_per_s: gen_length / seconds; per_step: positions computed by each forward; order: the position of
    each commit step's tokens, in commit order (lists of absolute answer indices)."""

    nfe: int = 0
    positions: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    per_step: list[int] = field(default_factory=list)
    order: list[list[int]] = field(default_factory=list)


@dataclass
class Generation:
    """tokens: (gen_length,) the answer's token ids; stats: DecodeStats."""

    tokens: torch.Tensor
    stats: DecodeStats


class _State:
    """The sequence being decoded and the meter."""

    def __init__(self, model, prompt: torch.Tensor, gen_length: int):
        self.model, self.p, self.n = model, prompt.shape[1], gen_length
        mask = torch.full((1, gen_length), model.mask_id, dtype=torch.long, device=prompt.device)
        self.x = torch.cat([prompt.to(torch.long), mask], dim=1)
        self.stats = DecodeStats()
        self.cache = None

    @property
    def masked(self) -> torch.Tensor:
        """(gen_length,) bool: which answer positions are still masked."""
        return self.x[0, self.p:] == self.model.mask_id

    def forward(self, positions: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                fill_cache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(conf, token) of the answer positions computed: all of them for a full forward (positions None),
        else the given absolute positions. fill_cache: a full forward that also (re)writes every K/V."""
        m = self.model
        if positions is None:
            if fill_cache:
                self.cache = m.new_cache(1, self.x.shape[1])
            logits = m(self.x, cache=self.cache if fill_cache else None)[0, self.p:]
            count = self.x.shape[1]
        else:
            logits = m(self.x[:, positions], positions=positions, cache=self.cache, keys=keys)[0]
            count = positions.numel()
        self.stats.nfe += 1
        self.stats.positions += count
        self.stats.per_step.append(count)
        logits = logits.float()
        logits[..., m.mask_id] = -float("inf")  # never "decode" a mask (it would never finish)
        conf, token = confidence_argmax(logits)
        return conf, token

    def commit(self, index: torch.Tensor, token: torch.Tensor) -> None:
        """Write tokens at answer indices (absolute answer positions 0..gen_length-1)."""
        self.x[0, self.p + index] = token
        self.stats.order.append(index.tolist())


def _top(conf: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k most confident allowed entries (ties: lower index first)."""
    scores = torch.where(allowed, conf.double(), torch.tensor(-float("inf"), dtype=torch.float64))
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def _threshold_pick(conf: torch.Tensor, allowed: torch.Tensor, threshold: float) -> torch.Tensor:
    """Allowed indices with conf > threshold, or the most confident allowed one if none is."""
    above = torch.nonzero(allowed & (conf > threshold)).flatten()
    return above if above.numel() else _top(conf, allowed, 1)


def _llada(s: _State, c: LLaDAConfig) -> None:
    steps = c.steps if c.steps is not None else s.n
    blocks = s.n // c.block_length
    if steps % blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({blocks} = gen_length / "
                         f"block_length)")
    per_block = steps // blocks
    idx = torch.arange(s.n, device=s.x.device)
    for b in range(blocks):
        lo, hi = b * c.block_length, (b + 1) * c.block_length
        in_block = (idx >= lo) & (idx < hi)
        m = int((s.masked & in_block).sum())
        counts = [m // per_block + (j < m % per_block) for j in range(per_block)]  # LLaDA's linear schedule
        for k in counts:
            if k == 0:
                continue
            conf, token = s.forward()
            pick = _top(conf, s.masked & in_block, k)
            s.commit(pick, token[pick])


def _decode_block(s: _State, lo: int, hi: int, threshold: float, cache: str) -> None:
    """Fast-dLLM's threshold decoding of answer positions [lo, hi): a full forward (which fills the cache), then
    the block's steps with the cache mode."""
    conf, token = s.forward(fill_cache=cache != "none")
    pick = _threshold_pick(conf[lo:hi], s.masked[lo:hi], threshold)
    s.commit(pick + lo, token[lo:hi][pick])
    _continue_block(s, lo, hi, threshold, cache)


def _fast_dllm(s: _State, c: FastDLLMConfig) -> None:
    for lo in range(0, s.n, c.block_length):
        _decode_block(s, lo, lo + c.block_length, c.threshold, c.cache)


def _adablock(s: _State, c: AdaBlockConfig, delimiter_id: int) -> None:
    while bool(s.masked.any()):
        lo = int(torch.nonzero(s.masked)[0])
        conf, token = s.forward(fill_cache=c.cache != "none")
        look = min(max(s.n // 4, 1), s.n - lo)
        window_conf, window_tok = conf[lo:lo + look], token[lo:lo + look]
        is_delim = (window_tok == delimiter_id) & s.masked[lo:lo + look]
        size = c.block_length
        if bool(is_delim.any()):
            best = int(torch.where(is_delim, window_conf, torch.zeros_like(window_conf)).argmax())
            if float(window_conf[best]) >= c.delimiter_threshold:
                size = best + 1
        hi = min(lo + size, s.n)
        # The block start's forward is reused for the block's first commit (AdaBlock step 1).
        pick = _threshold_pick(conf[lo:hi], s.masked[lo:hi], c.threshold)
        s.commit(pick + lo, token[lo:hi][pick])
        _continue_block(s, lo, hi, c.threshold, c.cache)


def _continue_block(s: _State, lo: int, hi: int, threshold: float, cache: str) -> None:
    """Threshold decoding of [lo, hi) after the block's first (full) forward, which already filled the cache."""
    while bool(s.masked[lo:hi].any()):
        if cache == "none":
            conf, token = s.forward()
            conf, token = conf[lo:hi], token[lo:hi]
        else:
            end = hi if cache == "dual" else s.n
            conf, token = s.forward(torch.arange(s.p + lo, s.p + end, device=s.x.device))
            conf, token = conf[: hi - lo], token[: hi - lo]
        pick = _threshold_pick(conf, s.masked[lo:hi], threshold)
        s.commit(pick + lo, token[pick])


def _window(s: _State, c: WindowConfig) -> None:
    step = 0
    device = s.x.device
    prompt_pos = torch.arange(s.p, device=device)
    phase_committed: list[int] = []
    while bool(s.masked.any()):
        if step % c.refresh == 0:
            # Phase start: full forward, every K/V refreshed, the standard rule over the whole answer.
            conf, token = s.forward(fill_cache=True)
            masked = s.masked
            if c.threshold is not None:
                # Parallel commits stay in the frontier (the first `active` masked positions), as inside a phase:
                # a global threshold rule would commit confident far tokens before their context exists.
                masked = masked & (torch.cumsum(masked.long(), 0) <= c.active)
            pick = (_top(conf, masked, 1) if c.threshold is None else _threshold_pick(conf, masked, c.threshold))
            s.commit(pick, token[pick])
            phase_committed = pick.tolist()
        else:
            masked_idx = torch.nonzero(s.masked).flatten()
            active = torch.unique(torch.cat([masked_idx[:c.active],
                                             torch.tensor(phase_committed, dtype=torch.long, device=device)]))
            decoded = torch.nonzero(~s.masked).flatten()
            window = torch.unique(torch.cat([decoded, masked_idx[:c.window], active]))
            keys = torch.cat([prompt_pos, window + s.p])
            conf, token = s.forward(active + s.p, keys=keys)
            allowed = s.masked[active]
            pick = (_top(conf, allowed, 1) if c.threshold is None else _threshold_pick(conf, allowed, c.threshold))
            s.commit(active[pick], token[pick])
            phase_committed += active[pick].tolist()
        step += 1


@torch.no_grad()
def generate(model, prompt: torch.Tensor | list[int], decoder: str | DecoderConfig = "llada", gen_length: int = 256,
             delimiter_id: int | None = None, **options) -> Generation:
    """Decode an answer of `gen_length` tokens for one prompt.

    Args:
        model: a masked-diffusion LM with `mask_id`, `config.max_len`, `new_cache(batch, length)` and
            `forward(ids, positions=None, cache=None, keys=None) -> logits` (accel.pipelines.mdlm's model, or an
            adapted checkpoint: accel.dllm.hf).
        prompt: the prompt's token ids, (P,) or (1, P).
        decoder: "llada", "fast-dllm", "window", "adablock" (options as keywords) or a decoder config.
        gen_length: answer tokens; a multiple of block_length for the block decoders.
        delimiter_id: the delimiter token for adablock (the CLI and the built-in model pass the newline's id).
    Returns:
        Generation(tokens (gen_length,), stats).
    Raises:
        ValueError: unknown decoder or option, gen_length not a multiple of block_length, prompt + answer longer
            than the model's context, an empty prompt.
    """
    config = get_decoder(decoder, **options)
    prompt = torch.as_tensor(prompt, dtype=torch.long)
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty (P,) or (1, P) tensor of token ids, got {tuple(prompt.shape)}")
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
    device = next(model.parameters()).device
    state = _State(model, prompt.to(device), gen_length)
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
    stats.tokens_per_s = gen_length / stats.seconds if stats.seconds > 0 else float("inf")
    return Generation(state.x[0, state.p:].cpu(), stats)
