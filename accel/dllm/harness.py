"""What lm-eval-harness asks of a language model, answered by a masked-diffusion LM and accel's decoders.

The harness itself is optional: accel.dllm.lm_eval registers this as lm-eval's model type `accel-dllm`. This
module needs no lm-eval, so its rules are tested (and usable) without it:

- `generate_until` decodes each request's context with an accel decoder (the `name:key=value` spec of
  `accel text --decoder`), cuts the answer at the first end-of-sequence token and then at the earliest of the
  request's `until` strings. Requests whose prompts have the same token count and answer length decode together, in
  batches of `batch_size` (the decoders give each sample its batch-1 tokens: tests/dllm/test_batch_and_rules.py).
- `loglikelihood` is the Monte-Carlo estimate of LLaDA's lm-eval harness (Nie et al. 2025, appendix B.6; after
  SMDM): log p(continuation | context) >= -E_t[ sum over masked continuation tokens of -log p_theta(token) / t ],
  with t the masked fraction; `mc_num` samples of stratified mask counts. For a one-token continuation the single
  sample is exact (its only mask count is 1, t = 1). `is_greedy` is LLaDA's check: decoding the continuation's
  length one token per step (the `llada` decoder, one block) gives the continuation.
- `loglikelihood_rolling` (perplexity tasks: wikitext, pile, ...) is not implemented: a masked-diffusion LM gives
  a bound per continuation, not the token-by-token conditional probabilities those tasks chain over windows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from accel.dllm.bench import parse_decoder
from accel.dllm.decode import generate
from accel.dllm.models import BUILTIN_TEXT, load_text_model

DTYPES = ("float32", "bfloat16", "float16")
# top_p / top_k only shape sampling: accepted, and moot, with greedy decoding (some tasks set them with do_sample off)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until (HFLM's max_gen_toks)


@dataclass(frozen=True)
class GenRequest:
    """One generate_until request: the context text, the stop strings, the answer's token budget."""

    context: str
    until: tuple[str, ...]
    max_gen_toks: int


def gen_request(context: str, gen_kwargs: dict) -> GenRequest:
    """A GenRequest from lm-eval's (context, gen_kwargs); ValueError for sampling or unknown keys (the decoders
    are greedy)."""
    unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if unknown:
        raise ValueError(f"unsupported generation options {unknown}; allowed: {', '.join(GEN_KWARGS)}")
    if gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0:
        raise ValueError("accel's dLLM decoders are greedy: do_sample must be false and temperature 0")
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    max_gen_toks = gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    if not isinstance(max_gen_toks, int) or isinstance(max_gen_toks, bool) or max_gen_toks < 1:
        raise ValueError(f"max_gen_toks must be an integer >= 1, got {max_gen_toks!r}")
    return GenRequest(context, until, max_gen_toks)


def cut_at(text: str, until: tuple[str, ...]) -> str:
    """text up to the earliest occurrence of any stop string (all of it when none occurs)."""
    ends = [i for i in (text.find(s) for s in until if s) if i >= 0]
    return text[: min(ends)] if ends else text


@dataclass
class Totals:
    """What the decoding spent over all generate_until requests: forwards, token-forwards, seconds, answer
    tokens (before the cuts)."""

    nfe: int = 0
    positions: int = 0
    seconds: float = 0.0
    tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class DLLMEvaluator:
    """A masked-diffusion LM with a decoder, answering lm-eval's requests (see the module docstring).

    Args:
        path: a built-in text model (counting, or its folder name counting-mdlm) or a local folder: accel's
            MaskedDiffusionLM, an official LLaDA / Dream checkpoint (loaded natively), another transformers
            masked LM (full forwards only).
        decoder: an accel decoder spec, `name[:key=value...]` (e.g. `fast-dllm:threshold=0.9`).
        gen_length: answer tokens for every request; None: each request's max_gen_toks, rounded up to the
            decoder's block_length, the answer then cut back to max_gen_toks tokens.
        batch_size: prompts per decoding call, and Monte-Carlo samples per forward for loglikelihood.
        device, dtype ("float32", "bfloat16", "float16"; native LLaDA / Dream weights only), mask_id: as
            accel.dllm.models.load_text_model.
        eos_stop: stop each answer at its first committed end-of-sequence token (fewer forwards; the tokens
            after it are never decoded). Off: decode every position, as the official harnesses do.
        mc_num: Monte-Carlo samples per loglikelihood request (LLaDA's 128).
        greedy_check: compute loglikelihood's is_greedy (len(continuation) forwards per request); False
            reports False, for tasks that only read the likelihood.
        seed: seeds each loglikelihood request's masks (the same seed for every request, so the choices of a
            multiple-choice question are scored with the same mask draws).
    """

    def __init__(self, path: str | None = None, decoder: str = "fast-dllm", gen_length: int | None = None,
                 batch_size: int | str = 1, device: str | None = None, dtype: str | None = None,
                 mask_id: int | None = None, eos_stop: bool = False, mc_num: int = 128, greedy_check: bool = True,
                 seed: int = 1234):
        self.config = parse_decoder(str(decoder))
        self.batch_size = _positive_int("batch_size", batch_size)
        self.gen_length = None if gen_length is None else _positive_int("gen_length", gen_length)
        self.mc_num = _positive_int("mc_num", mc_num)
        self.eos_stop, self.greedy_check, self.seed = bool(eos_stop), bool(greedy_check), int(seed)
        self.model, self.tokenizer = load_model(path, device, dtype, mask_id)
        self.totals = Totals()

    # --- generate_until ---------------------------------------------------------------------------------------

    def answer_length(self, max_gen_toks: int) -> int:
        """Tokens to decode for a request: gen_length, else max_gen_toks rounded up to the block length."""
        if self.gen_length is not None:
            return self.gen_length
        block = getattr(self.config, "block_length", None)
        if block is None or self.config.name == "adablock":  # adablock's blocks need no multiple
            return max_gen_toks
        return math.ceil(max_gen_toks / block) * block

    def generate_until(self, requests: list[GenRequest]) -> list[str]:
        """The answer text of each request, in order (see the module docstring)."""
        prompts = [self.tokenizer.prompt_ids(r.context) for r in requests]
        lengths = [self.answer_length(r.max_gen_toks) for r in requests]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (ids, n) in enumerate(zip(prompts, lengths)):
            groups[(len(ids), n)].append(i)
        answers: list[torch.Tensor | None] = [None] * len(requests)
        for (_, n), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                for i, tokens in zip(chunk, self._decode([prompts[i] for i in chunk], n)):
                    answers[i] = tokens if self.gen_length is not None else tokens[: requests[i].max_gen_toks]
        return [self._text(tokens, r.until) for tokens, r in zip(answers, requests)]

    def _decode(self, prompts: list[list[int]], n: int) -> torch.Tensor:
        """(B, n) answer tokens of a batch of equal-length prompts."""
        eos = self.tokenizer.eos_id if self.eos_stop else None
        out = generate(self.model, prompts, self.config, n, delimiter_id=self.tokenizer.index.get("\n"), eos_id=eos)
        t, s = self.totals, out.stats
        t.nfe, t.positions, t.seconds = t.nfe + s.nfe, t.positions + s.positions, t.seconds + s.seconds
        t.tokens += out.tokens.numel()
        t.batch_sizes.append(len(prompts))
        return out.tokens

    def _text(self, tokens: torch.Tensor, until: tuple[str, ...]) -> str:
        """Answer text: cut at the first EOS token, then at the stop strings; a transformers tokenizer's special
        token texts are removed last (as skip_special_tokens in the official harnesses)."""
        eos = self.tokenizer.eos_id
        if eos is not None and bool((tokens == eos).any()):
            tokens = tokens[: int(torch.nonzero(tokens == eos)[0])]
        text = cut_at(self.tokenizer.decode(tokens), until)
        hf = getattr(self.tokenizer, "tokenizer", None)
        for special in getattr(hf, "all_special_tokens", ()):
            text = text.replace(special, "")
        return text

    # --- loglikelihood ----------------------------------------------------------------------------------------

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log-likelihood estimate, is_greedy) of each (context, continuation)."""
        out = []
        for context, continuation in requests:
            prefix, target = encode_pair(self.tokenizer, context, continuation)
            if not target:
                raise ValueError(f"the continuation {continuation!r} encodes to no tokens")
            if len(prefix) + len(target) > self.model.config.max_len:
                raise ValueError(f"context + continuation ({len(prefix) + len(target)} tokens) exceed the model's "
                                 f"context of {self.model.config.max_len} tokens")
            generator = torch.Generator().manual_seed(self.seed)
            ll = mc_loglikelihood(self.model, prefix, target, self.mc_num, self.batch_size, generator)
            out.append((ll, self.greedy_check and self._is_greedy(prefix, target)))
        return out

    def _is_greedy(self, prefix: list[int], target: list[int]) -> bool:
        """LLaDA's check: one token per step, the most confident masked position first, over the continuation."""
        n = len(target)
        tokens = generate(self.model, prefix, "llada", n, block_length=n).tokens
        return tokens.tolist() == list(target)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids). accel's character tokenizer: the model's prompt format `<bos> context
    <sep>` and the continuation's characters. A transformers tokenizer: as LLaDA's harness, trailing spaces of the
    context move to the continuation, and the continuation is what encoding both adds to the context's ids."""
    from accel.pipelines.mdlm import CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.prompt_ids(context), tokenizer.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    prefix = tokenizer.prompt_ids(context)
    return prefix, tokenizer.prompt_ids(context + continuation)[len(prefix):]


@torch.no_grad()
def mc_loglikelihood(model, prefix: list[int], target: list[int], mc_num: int, batch_size: int,
                     generator: torch.Generator) -> float:
    """LLaDA's Monte-Carlo lower bound on log p(target | prefix) (see the module docstring).

    Sample i masks m_i of the L target tokens (m_i uniform at random positions) and scores the masked ones'
    cross-entropy weighted L / m_i. The counts are stratified: one offset k ~ U{1..L}, then mc_num evenly spaced
    counts from it, wrapped into 1..L. Deviation from LLaDA's harness: the strata span all mc_num samples, not
    each forward's batch, so the estimate does not depend on batch_size (the forwards only group samples).
    """
    device = next(model.parameters()).device
    seq = torch.tensor([*prefix, *target], dtype=torch.long, device=device)
    p, n = len(prefix), len(target)
    k = int(torch.randint(1, n + 1, (), generator=generator))
    counts = torch.round(torch.linspace(k, k + (mc_num - 1) * n / mc_num, mc_num, dtype=torch.float64)).long()
    counts = (counts - 1) % n + 1  # (mc_num,) in 1..n
    order = torch.rand(mc_num, n, generator=generator).argsort(1)  # a random permutation per sample
    masked = (order < counts[:, None]).to(device)  # (mc_num, n): counts[i] positions, uniformly at random
    weight = (n / counts).to(device=device, dtype=torch.float64)
    total = 0.0
    for rows in (slice(s, s + batch_size) for s in range(0, mc_num, batch_size)):
        x = seq.repeat(masked[rows].shape[0], 1)  # (b, P + L)
        x[:, p:] = torch.where(masked[rows], model.mask_id, x[:, p:])
        logits = model(x)
        if getattr(model, "logits_shift", 0):  # Dream: logits[i] predicts token i + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        ce = F.cross_entropy(logits[:, p:].float().transpose(1, 2), seq[p:].expand(x.shape[0], n), reduction="none")
        total += float(((ce.double() * masked[rows]).sum(1) * weight[rows]).sum())
    return -total / mc_num


# --- loading and checks ---------------------------------------------------------------------------------------


def load_model(path: str | None, device: str | None, dtype: str | None, mask_id: int | None):
    """(model, tokenizer) for the harness's path=; ValueError naming what is allowed."""
    allowed = (f"a built-in text model ({', '.join([*BUILTIN_TEXT, *BUILTIN_TEXT.values()])}) or a local folder "
               "of a LLaDA / Dream checkpoint or of accel's MaskedDiffusionLM")
    if not path:
        raise ValueError(f"path= is required: {allowed}")
    path = str(path)
    names = {folder: name for name, folder in BUILTIN_TEXT.items()}
    path = names.get(path, path)
    if path not in BUILTIN_TEXT and not Path(path).is_dir():
        raise ValueError(f"path={path!r} is neither a built-in text model nor a folder: {allowed} (download a hub "
                         "checkpoint first, e.g. with huggingface-cli download)")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        model, tokenizer = load_text_model(path, device=device, mask_id=mask_id,
                                           dtype=getattr(torch, dtype) if dtype else None)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # transformers' config / file errors: which folder, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {path!r} as a masked-diffusion LM ({first}): {allowed}") from None
    if tokenizer is None:
        raise ValueError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return model, tokenizer


def _positive_int(name: str, value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        auto = " (lm-eval's 'auto' is not supported)" if name == "batch_size" else ""
        raise ValueError(f"{name} must be an integer >= 1{auto}, got {value!r}")
    return value
