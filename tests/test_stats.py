"""Statistics over step times: percentiles, spread, median confidence interval, stability."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from autotune.profiling.stats import (
    PERCENTILE_MIN_SAMPLES,
    is_stable,
    median_ci,
    percentile,
    spread,
)

# -- percentile --------------------------------------------------------------------------------


@pytest.mark.parametrize("q", sorted(PERCENTILE_MIN_SAMPLES))
def test_percentile_none_below_minimum_samples(q: int) -> None:
    needed = PERCENTILE_MIN_SAMPLES[q]
    values = [float(i) for i in range(1, needed)]  # one short
    assert percentile(values, q) is None


@pytest.mark.parametrize("q", sorted(PERCENTILE_MIN_SAMPLES))
def test_percentile_equals_numpy_at_and_above_minimum(q: int) -> None:
    rng = np.random.default_rng(q)
    for n in (PERCENTILE_MIN_SAMPLES[q], PERCENTILE_MIN_SAMPLES[q] + 1, 1000):
        values = rng.lognormal(mean=-5, sigma=0.3, size=n).tolist()
        got = percentile(values, q)
        assert got is not None
        assert got == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
        assert isinstance(got, float)


def test_percentile_thresholds_are_mlperfs() -> None:
    assert PERCENTILE_MIN_SAMPLES[50] >= 1
    assert PERCENTILE_MIN_SAMPLES[90] == 64
    assert PERCENTILE_MIN_SAMPLES[99] == 662
    # every gated percentile leaves at least 6 samples beyond it
    for q in (90, 95, 99):
        assert PERCENTILE_MIN_SAMPLES[q] * (100 - q) / 100 >= 6


@pytest.mark.parametrize(("q", "n"), [(90, 64), (95, 132), (99, 662)])
def test_percentile_gated_exactly_at_the_mlperf_count(q: int, n: int) -> None:
    assert percentile([1.0] * (n - 1), q) is None
    assert percentile([1.0] * n, q) == 1.0


def test_percentile_empty_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_median_of_known_values() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(1001)], 99) == pytest.approx(990.0)
    assert percentile([float(i) for i in range(201)], 95) == pytest.approx(190.0)


# -- spread ------------------------------------------------------------------------------------


def test_spread_known_arrays() -> None:
    # 1..9: q1 = 3, median = 5, q3 = 7 -> IQR/median = 4/5
    assert spread([float(i) for i in range(1, 10)]) == pytest.approx(0.8)
    assert spread([2.0] * 10) == 0.0
    # 1, 2, 3, 4: q1 = 1.75, median = 2.5, q3 = 3.25 -> 1.5/2.5
    assert spread([4.0, 1.0, 3.0, 2.0]) == pytest.approx(0.6)


def test_spread_matches_numpy_definition() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(1.0, 0.05, size=200)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    assert spread(values.tolist()) == pytest.approx((q3 - q1) / med)


def test_spread_is_scale_invariant() -> None:
    values = [0.010, 0.011, 0.012, 0.0105, 0.013, 0.0111]
    assert spread(values) == pytest.approx(spread([v * 1000 for v in values]))


def test_spread_too_few_samples_or_zero_median_is_inf() -> None:
    assert spread([1.0, 2.0, 3.0]) == math.inf
    assert spread([]) == math.inf
    assert spread([0.0, 0.0, 0.0, 0.0, 1.0]) == math.inf


# -- median_ci ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5])
def test_median_ci_none_for_fewer_than_six(n: int) -> None:
    assert median_ci([1.0] * n) is None


def test_median_ci_contains_median_and_narrows() -> None:
    rng = np.random.default_rng(11)
    widths = []
    for n in (6, 10, 30, 100, 1000, 10000):
        values = rng.lognormal(mean=-4, sigma=0.2, size=n)
        ci = median_ci(values.tolist())
        assert ci is not None
        lo, hi = ci
        assert lo <= float(np.median(values)) <= hi
        assert min(values) <= lo <= hi <= max(values)
        widths.append(hi - lo)
    # (n = 6 and n = 10 may both span the whole sample; from n = 10 on it must narrow)
    assert all(a > b for a, b in itertools.pairwise(widths[1:])), widths
    assert widths[-1] < widths[0] / 10


def test_median_ci_of_constant_values_is_a_point() -> None:
    assert median_ci([0.5] * 50) == (0.5, 0.5)


def test_median_ci_coverage_is_about_95_percent() -> None:
    """The interval covers the true median about 95 % of the time (not much less)."""
    rng = np.random.default_rng(5)
    true_median = math.log(2)  # exponential(1)
    for n in (20, 100):
        hits = 0
        reps = 1000
        for _ in range(reps):
            ci = median_ci(rng.exponential(1.0, size=n).tolist())
            assert ci is not None
            hits += ci[0] <= true_median <= ci[1]
        assert hits / reps >= 0.92, (n, hits / reps)


def test_median_ci_wider_at_higher_confidence() -> None:
    values = np.random.default_rng(2).normal(10, 1, size=200).tolist()
    ci90, ci99 = median_ci(values, 0.90), median_ci(values, 0.99)
    assert ci90 is not None and ci99 is not None
    assert ci99[0] <= ci90[0] and ci90[1] <= ci99[1]
    assert ci99[1] - ci99[0] > ci90[1] - ci90[0]


# -- is_stable ---------------------------------------------------------------------------------


def test_is_stable_needs_two_windows() -> None:
    assert not is_stable([1.0] * 9)
    assert is_stable([1.0] * 10)
    assert not is_stable([])


def test_is_stable_detects_warmup_and_plateau() -> None:
    warming = [5.0, 4.0, 3.0, 2.5, 2.0, 1.6, 1.3, 1.1, 1.0, 1.0]
    assert not is_stable(warming)
    plateau = [*warming, 1.0, 1.02, 0.99, 1.01, 1.0]
    assert is_stable(plateau)


def test_is_stable_tolerance_and_window() -> None:
    values = [1.0] * 5 + [1.08] * 5
    assert is_stable(values)                       # 8 % <= 10 %
    assert not is_stable(values, tolerance=0.05)
    values = [1.0] * 5 + [1.2] * 5
    assert not is_stable(values)
    # only the last 2 * window values matter
    assert is_stable([9.0] * 20 + [1.0] * 6, window=3)
    assert not is_stable([9.0] * 20 + [1.0] * 6, window=4)


def test_is_stable_zero_times_are_not_stable() -> None:
    assert not is_stable([0.0] * 10)


def test_relative_ci_halfwidth_is_the_median_intervals_half_width_over_the_median() -> None:
    from autotune.profiling.stats import relative_ci_halfwidth

    rng = np.random.default_rng(3)
    for n in (6, 7, 50, 333, 4000):
        values = list(rng.lognormal(0.0, 0.3, n))
        ci = median_ci(values)
        assert ci is not None
        expected = (ci[1] - ci[0]) / (2 * float(np.median(values)))
        # selection picks the same order statistics as median_ci's sort
        assert relative_ci_halfwidth(values) == pytest.approx(expected, rel=1e-12)
    assert relative_ci_halfwidth([1.0] * 5) == math.inf
    assert relative_ci_halfwidth([2.0] * 50) == 0.0
