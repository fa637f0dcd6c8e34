"""The built-in language model's task: counting in steps, written out (exact answers, long outputs).

A prompt `count S by K` (S a start in 0..999, K a step in 1..9) has the answer S, S + K, S + 2K, ... (mod 1000),
each as three digits, four numbers per line (`137,144,151,158` and a newline: 16 tokens), for exactly
`gen_length` tokens. Each digit follows from the number before it and the carry from the digit to its right, so a
decoder that commits tokens far from what it already knows commits guesses: decoding order and confidence matter
as they do for real text. The answer never repeats within 256 tokens (unlike digit recurrences, whose periodic
answers let a model copy from the previous period instead of learning the rule). Newlines are delimiters
(AdaBlock uses them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SPECIALS = ("<pad>", "<mask>", "<bos>", "<sep>", "<eos>", "\n", ",", "count", "by")
VOCAB = (*SPECIALS, *"0123456789")
LINE = 16  # tokens per line: four 3-digit numbers, three commas, a newline


@dataclass(frozen=True)
class Problem:
    start: int
    step: int

    @property
    def prompt(self) -> str:
        return f"count {self.start:03d} by {self.step}"


def answer(problem: Problem, gen_length: int) -> str:
    """The exact answer text of gen_length tokens."""
    out, n = [], problem.start
    while len(out) < gen_length:
        for j in range(4):
            out += [*f"{n % 1000:03d}", "," if j < 3 else "\n"]
            n += problem.step
    return "".join(out[:gen_length])


def parse_prompt(text: str) -> Problem:
    """A Problem from its prompt text 'count SSS by K'; ValueError naming the format otherwise."""
    parts = text.split()
    ok = (len(parts) == 4 and parts[0] == "count" and parts[2] == "by" and parts[1].isdigit() and len(parts[1]) == 3
          and parts[3].isdigit() and len(parts[3]) == 1 and parts[3] != "0")
    if not ok:
        raise ValueError(f"prompt must be 'count SSS by K' with SSS three digits and K in 1..9 (e.g. 'count 137 by "
                         f"7'), got {text!r}")
    return Problem(int(parts[1]), int(parts[3]))


def random_problem(rng: random.Random) -> Problem:
    return Problem(rng.randrange(1000), rng.randrange(1, 10))


def problem_set(n: int, seed: int) -> list[Problem]:
    """n problems drawn with a seed."""
    rng = random.Random(seed)
    return [random_problem(rng) for _ in range(n)]


def score(text: str, problem: Problem, gen_length: int) -> tuple[bool, float]:
    """(exact match, fraction of correct tokens) of a decoded answer text."""
    ref = answer(problem, gen_length)
    same = sum(a == b for a, b in zip(text, ref))
    return text == ref, same / len(ref)
