"""The built-in language model's task: digit recurrences written out in lines (exact answers, long outputs).

A prompt names a rule and three digits, `<bos> RULE k a b <sep>`; the answer is the sequence x_0 = a, x_1 = b,
x_n = f(x_{n-1}, x_{n-2}) mod 10, written 15 digits per line with a newline after each line, for exactly
`gen_length` tokens. Rules (k is the prompt's first digit):

    add:  x_n = x_{n-1} + k
    fib:  x_n = x_{n-1} + x_{n-2} + k
    lin:  x_n = k x_{n-1} + x_{n-2}

Every answer token is determined by the prompt, but in practice only by the two digits before it (or the ones
around it): a decoder that commits tokens far from what it already knows commits guesses, so decoding order and
confidence matter as they do for real text. Newlines are delimiters (AdaBlock uses them). 256-token answers make
windowing and caching matter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RULES = ("add", "fib", "lin")
SPECIALS = ("<pad>", "<mask>", "<bos>", "<sep>", "<eos>", "\n")
VOCAB = (*SPECIALS, *RULES, *"0123456789")
LINE = 16  # tokens per line: 15 digits and a newline


@dataclass(frozen=True)
class Problem:
    rule: str
    k: int
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.rule} {self.k} {self.a} {self.b}"


def digits(problem: Problem, n: int) -> list[int]:
    """The first n terms of the problem's recurrence."""
    xs = [problem.a, problem.b]
    k = problem.k
    while len(xs) < n:
        p1, p2 = xs[-1], xs[-2]
        xs.append((p1 + k) % 10 if problem.rule == "add" else (p1 + p2 + k) % 10 if problem.rule == "fib"
                  else (k * p1 + p2) % 10)
    return xs[:n]


def answer(problem: Problem, gen_length: int) -> str:
    """The exact answer text of gen_length tokens (digits, and a newline as every 16th token)."""
    n_digits = gen_length - gen_length // LINE
    xs = iter(digits(problem, n_digits))
    return "".join("\n" if (i + 1) % LINE == 0 else str(next(xs)) for i in range(gen_length))


def parse_prompt(text: str) -> Problem:
    """A Problem from its prompt text 'RULE k a b'; ValueError naming the format otherwise."""
    parts = text.split()
    ok = (len(parts) == 4 and parts[0] in RULES and all(p.isdigit() and len(p) == 1 for p in parts[1:]))
    if not ok:
        raise ValueError(f"prompt must be 'RULE k a b' with RULE in {', '.join(RULES)} and k, a, b single digits "
                         f"(e.g. 'fib 3 1 4'), got {text!r}")
    return Problem(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def problem_set(n: int, seed: int) -> list[Problem]:
    """n problems drawn with a seed, the rules in turn."""
    rng = random.Random(seed)
    return [Problem(RULES[i % len(RULES)], rng.randrange(1, 10), rng.randrange(10), rng.randrange(10))
            for i in range(n)]


def score(text: str, problem: Problem, gen_length: int) -> tuple[bool, float]:
    """(exact match, fraction of correct tokens) of a decoded answer text."""
    ref = answer(problem, gen_length)
    same = sum(a == b for a, b in zip(text, ref))
    return text == ref, same / len(ref)
