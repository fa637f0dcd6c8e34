"""The built-in language models' tasks: exact answers, long outputs, one fixed prompt format each.

**counting** (`count S by K`, S a start in 0..999, K a step in 1..9): the answer is S, S + K, S + 2K, ...
(mod 1000), each as three digits, four numbers per line (`137,144,151,158` and a newline: 16 tokens), for exactly
`gen_length` tokens. Each digit follows from the number before it and the carry from the digit to its right, so a
decoder that commits tokens far from what it already knows commits guesses: decoding order and confidence matter
as they do for real text. The answer never repeats within 256 tokens (unlike digit recurrences, whose periodic
answers let a model copy from the previous period instead of learning the rule). Newlines are delimiters
(AdaBlock uses them).

**addition** (`add AAAA + BBBB`, two 4-digit numbers): a chain of 4-digit additions with the carries written out.
The first two lines restate A and B; every later line is the sum (mod 10^4) of the two numbers above it, written as
the carry out of each column (thousands to units), a comma, and the sum's four digits:

    add 4821 + 0967  ->  0000,4821      A
                         0000,0967      B
                         0100,5788      4821 + 0967: 8+9 = 17 in the hundreds carries 1
                         0111,6755      0967 + 5788
                         1111,2543      5788 + 6755 = 12543 (mod 10^4)
                         ...            10 tokens a line, for exactly gen_length tokens

Every token is a small function of tokens at fixed distances (the same column one and two lines up, and the carry
out of the column to its right), so a 1M-parameter model can learn the rule; but each line depends on the two
before it and each column on the carry from its right, so a decoder that commits a token whose inputs are still
masked commits a guess, and one wrong digit spoils every later line. Harder than counting for parallel decoders:
counting's numbers can be computed several lines ahead (S + nK), the chain's cannot. Problems are held out from
training by construction (`is_held_out`: a hash of the prompt picks 1 in 8): the benchmark's problem sets
(`Task.problem_set`) draw only held-out problems, training (`Task.train_problem`) never does. Chains that repeat
within 100 lines (e.g. A = B = 0) are never drawn.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from accel.config import check_choice

SPECIALS = ("<pad>", "<mask>", "<bos>", "<sep>", "<eos>", "\n", ",", "count", "by")
VOCAB = (*SPECIALS, *"0123456789")
LINE = 16  # tokens per line: four 3-digit numbers, three commas, a newline
# The addition model's vocabulary: counting's (the same ids) and the addition prompt's two words.
ADDITION_VOCAB = (*VOCAB, "add", "+")
ADDITION_LINE = 10  # tokens per line: four carries, a comma, four digits, a newline
DIGITS = 4
HELD_OUT = 8  # 1 in HELD_OUT addition problems is held out from training
NO_REPEAT_LINES = 100  # the chain of a drawn problem does not repeat within this many lines (about 1000 tokens)


class TaskProblem(Protocol):
    """A problem of a task: its prompt text and its exact answer of any length."""

    @property
    def prompt(self) -> str: ...

    def answer(self, gen_length: int) -> str: ...


# ---------------------------------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A counting problem: `count SSS by K`."""

    start: int
    step: int

    @property
    def prompt(self) -> str:
        return f"count {self.start:03d} by {self.step}"

    def answer(self, gen_length: int) -> str:
        return answer(self, gen_length)


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
    """n counting problems drawn with a seed."""
    rng = random.Random(seed)
    return [random_problem(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# addition
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdditionProblem:
    """An addition problem: `add AAAA + BBBB` (see the module docstring for its answer)."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"add {self.a:0{DIGITS}d} + {self.b:0{DIGITS}d}"

    def answer(self, gen_length: int) -> str:
        """The exact answer text of gen_length tokens (one character per token)."""
        out = ""
        for line in addition_lines(self.a, self.b):
            out += line
            if len(out) >= gen_length:
                return out[:gen_length]


def add_with_carries(x: int, y: int) -> tuple[str, int]:
    """(the carry out of each column, most significant first; (x + y) mod 10^DIGITS) of two DIGITS-digit numbers."""
    carries, carry = [], 0
    for j in range(DIGITS):  # units first: each column takes the carry from the one to its right
        column = x // 10**j % 10 + y // 10**j % 10 + carry
        carry = column // 10
        carries.append(str(carry))
    return "".join(reversed(carries)), (x + y) % 10**DIGITS


def addition_lines(a: int, b: int) -> Iterator[str]:
    """The answer's lines without end: A, B (no carries), then each the sum of the two lines before."""
    zeros = "0" * DIGITS
    yield f"{zeros},{a:0{DIGITS}d}\n"
    yield f"{zeros},{b:0{DIGITS}d}\n"
    while True:
        carries, total = add_with_carries(a, b)
        a, b = b, total
        yield f"{carries},{total:0{DIGITS}d}\n"


def parse_addition(text: str) -> AdditionProblem:
    """An AdditionProblem from 'add AAAA + BBBB'; ValueError naming the format otherwise."""
    parts = text.split()
    ok = (len(parts) == 4 and parts[0] == "add" and parts[2] == "+"
          and all(p.isdigit() and len(p) == DIGITS for p in (parts[1], parts[3])))
    if not ok:
        raise ValueError(f"prompt must be 'add AAAA + BBBB' with AAAA and BBBB four digits each (e.g. 'add 4821 + "
                         f"0967'), got {text!r}")
    return AdditionProblem(int(parts[1]), int(parts[3]))


def is_held_out(problem: AdditionProblem) -> bool:
    """Whether a problem belongs to the held-out (benchmark) split: a hash of its prompt, 1 in HELD_OUT."""
    return zlib.crc32(problem.prompt.encode()) % HELD_OUT == 0


def _repeats(problem: AdditionProblem) -> bool:
    """Whether the chain comes back to an earlier pair of consecutive numbers within NO_REPEAT_LINES lines."""
    seen, (a, b) = set(), (problem.a, problem.b)
    for _ in range(NO_REPEAT_LINES):
        if (a, b) in seen:
            return True
        seen.add((a, b))
        a, b = b, (a + b) % 10**DIGITS
    return False


def random_addition(rng: random.Random, held_out: bool) -> AdditionProblem:
    """An addition problem of the held-out split (held_out=True) or of the training split."""
    while True:
        p = AdditionProblem(rng.randrange(10**DIGITS), rng.randrange(10**DIGITS))
        if is_held_out(p) == held_out and not _repeats(p):
            return p


# ---------------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A built-in task: its vocabulary, its prompt format (parse_prompt raises a ValueError naming it), the
    training problems (train_problem) and the benchmark's problem sets (problem_set: held-out problems where the
    task holds some out). The built-in text model of the same name is trained on it (accel.dllm.models)."""

    name: str
    vocab: tuple[str, ...]
    example: str
    parse_prompt: Callable[[str], TaskProblem]
    train_problem: Callable[[random.Random], TaskProblem]
    test_problem: Callable[[random.Random], TaskProblem]

    def problem_set(self, n: int, seed: int) -> list[TaskProblem]:
        """n benchmark problems drawn with a seed."""
        rng = random.Random(seed)
        return [self.test_problem(rng) for _ in range(n)]


TASKS = {
    # Every counting problem (9,000 of them) is a training problem too.
    "counting": Task("counting", VOCAB, "count 137 by 7", parse_prompt, random_problem, random_problem),
    "addition": Task("addition", ADDITION_VOCAB, "add 4821 + 0967", parse_addition,
                     lambda rng: random_addition(rng, held_out=False), lambda rng: random_addition(rng, held_out=True)),
}


def get_task(name: str) -> Task:
    check_choice("task", name, TASKS)
    return TASKS[name]


def score(text: str, problem: TaskProblem, gen_length: int) -> tuple[bool, float]:
    """(exact match, fraction of correct tokens) of a decoded answer text (one character per token)."""
    ref = problem.answer(gen_length)
    same = sum(a == b for a, b in zip(text, ref))
    return text == ref, same / len(ref)
