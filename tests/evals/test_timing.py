"""The shared timing method (accel.evals.timing): the interleaved schedule and the spreads, against hand counts and
closed forms."""

import statistics

import pytest

from accel.evals.timing import Spread, median_spread, quartiles, round_orders


def test_rounds_interleave_every_method_and_rotate_the_order():
    rounds = round_orders(methods=3, prompts=4, repeats=2)
    assert [(r, i) for r, i, _ in rounds] == [(r, i) for r in range(2) for i in range(4)]
    for k, (_, _, order) in enumerate(rounds):
        assert sorted(order) == [0, 1, 2]  # every method once per round, round-robin from a rotated start
        assert order == [(k + j) % 3 for j in range(3)]
    # Over 6 rounds (a multiple of 3) every method runs first, second and third equally often.
    for position in range(3):
        assert sorted(order[position] for _, _, order in rounds[:6]) == [0, 0, 1, 1, 2, 2]


def test_two_methods_alternate_round_by_round():
    """The order the kernel and the overhead benchmarks had written out: the first method first in even rounds."""
    assert [order for _, _, order in round_orders(2, 1, 4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]


def test_median_spread_and_quartiles():
    assert median_spread([2.0, 1.0, 4.0]) == Spread(2.0, 1.0, 4.0, 1.5)  # (4 - 1) / 2
    assert median_spread([3.0]) == Spread(3.0, 3.0, 3.0, None)  # no spread from one repeat
    assert median_spread([0.0, 0.0]).spread is None  # no relative spread around a zero median
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    q1, median, q3 = quartiles(values)
    assert median == statistics.median(values) and (q1, q3) == pytest.approx((1.5, 4.5))  # exclusive method
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
