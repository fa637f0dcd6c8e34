"""Timing methods against each other on a shared machine: interleaved round-robin orders and the spreads of their
repeats.

A slow spell of the machine (another job starting) should fall on every method alike, so the methods take turns:
in each round every method runs once, the order rotated by one method each round (round_orders). Ratios are
paired (two methods within one repeat) and reported with their spread (median_spread, quartiles).

Used by `accel bench dllm` (accel.dllm.bench), `accel bench overhead` (accel.evals.overhead) and the benchmark
scripts benchmarks/kernels/bench_e2e_cpu.py, benchmarks/moe/bench_engine_cpu.py, benchmarks/dllm/bench_llada_gpu.py.
Standard library only, so that any benchmark can import it.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple


def round_orders(methods: int, prompts: int, repeats: int) -> list[tuple[int, int, list[int]]]:
    """The interleaved schedule: (repeat, prompt, order of the method indices) per round, in run order.

    Round k (k = repeat * prompts + prompt) runs the methods round-robin starting at method k mod methods, so over
    a multiple of `methods` rounds every method runs in every position equally often."""
    rounds = []
    for r in range(repeats):
        for i in range(prompts):
            start = (r * prompts + i) % methods
            rounds.append((r, i, [(start + j) % methods for j in range(methods)]))
    return rounds


class Spread(NamedTuple):
    """The median of repeated measurements, their min and max, and (max - min) / median (None for one value)."""

    median: float
    min: float
    max: float
    spread: float | None


def median_spread(values: list[float]) -> Spread:
    """The median, min, max and relative spread of repeated measurements (one per repeat)."""
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if len(values) > 1 and median > 0 else None
    return Spread(median, min(values), max(values), spread)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of repeated measurements (statistics.quantiles, exclusive method); one value is all three."""
    if len(values) > 1:
        q1, median, q3 = statistics.quantiles(values, n=4)
        return q1, median, q3
    return (values[0],) * 3
