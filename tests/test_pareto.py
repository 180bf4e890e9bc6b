"""Pareto dominance and fronts (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.pareto import dominates, pareto_front

MAX_MIN = ["maximize", "minimize"]


def _brute_front(points: list[tuple[int, list[float]]], directions: list[str]) -> list[int]:
    """Reference: a point is on the front unless some other valid point is at least as good
    in every objective and strictly better in one (written independently of the product)."""
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    valid = [(k, np.asarray(v, dtype=float) * sign) for k, v in points
             if not np.isnan(np.asarray(v, dtype=float)).any()]
    front = []
    for k, v in valid:
        dominated = any(np.all(w >= v) and np.any(w > v) for _, w in valid)
        if not dominated:
            front.append(k)
    return front


# -- dominates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "directions", "expected"), [
    ([2.0, 1.0], [1.0, 2.0], MAX_MIN, True),       # better in both
    ([1.0, 2.0], [2.0, 1.0], MAX_MIN, False),      # worse in both
    ([2.0, 2.0], [1.0, 2.0], MAX_MIN, True),       # better in one, equal in the other
    ([2.0, 3.0], [1.0, 2.0], MAX_MIN, False),      # trade-off
    ([1.0, 2.0], [1.0, 2.0], MAX_MIN, False),      # equal: nobody dominates
    ([1.0], [2.0], ["minimize"], True),
    ([1.0], [2.0], ["maximize"], False),
    ([3.0, 1.0, 5.0], [2.0, 1.0, 5.0], ["maximize", "minimize", "maximize"], True),
    ([3.0, 1.0, 4.0], [2.0, 1.0, 5.0], ["maximize", "minimize", "maximize"], False),
])
def test_dominates(a: list[float], b: list[float], directions: list[str],
                   expected: bool) -> None:
    assert dominates(a, b, directions) is expected


def test_dominates_is_irreflexive_and_antisymmetric() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.integers(0, 3, size=(2, 3)).astype(float).tolist()
        directions = list(rng.choice(["maximize", "minimize"], size=3))
        assert not dominates(a, a, directions)
        assert not (dominates(a, b, directions) and dominates(b, a, directions))


def test_dominates_with_infinities() -> None:
    inf = math.inf
    assert dominates([inf, 1.0], [1e308, 1.0], MAX_MIN)
    assert dominates([1.0, -inf], [1.0, -1e308], MAX_MIN)
    assert not dominates([-inf, 1.0], [0.0, 1.0], MAX_MIN)
    assert not dominates([1.0, inf], [1.0, 0.0], MAX_MIN)
    # equal infinities are ties
    assert not dominates([inf, inf], [inf, inf], MAX_MIN)


def test_dominates_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        dominates([1.0, 2.0], [1.0, 2.0], ["maximize"])


# -- pareto_front ------------------------------------------------------------------------------


def test_empty_and_single_point() -> None:
    assert pareto_front([], MAX_MIN) == []
    assert pareto_front([("only", [1.0, 2.0])], MAX_MIN) == ["only"]


def test_mixed_directions() -> None:
    # maximize throughput, minimize latency
    points = [
        ("a", [100.0, 10.0]),
        ("b", [200.0, 20.0]),   # trade-off with a
        ("c", [150.0, 30.0]),   # dominated by b
        ("d", [50.0, 10.0]),    # dominated by a (equal latency, less throughput)
        ("e", [300.0, 50.0]),   # trade-off
    ]
    assert pareto_front(points, MAX_MIN) == ["a", "b", "e"]
    # the same points with both minimized: the front changes
    assert pareto_front(points, ["minimize", "minimize"]) == ["d"]
    assert pareto_front(points, ["maximize", "maximize"]) == ["e"]


def test_equal_points_are_all_kept_in_input_order() -> None:
    points = [(3, [1.0, 1.0]), (1, [1.0, 1.0]), (2, [0.5, 2.0]), (0, [1.0, 1.0])]
    assert pareto_front(points, MAX_MIN) == [3, 1, 0]


def test_nan_points_are_excluded_and_dominate_nothing() -> None:
    nan = math.nan
    points = [("nan1", [nan, 0.0]), ("ok", [1.0, 5.0]), ("nan2", [10.0, nan])]
    assert pareto_front(points, MAX_MIN) == ["ok"]
    assert pareto_front([("x", [nan, nan])], MAX_MIN) == []


def test_infinite_values() -> None:
    inf = math.inf
    points = [
        ("best_throughput", [inf, 10.0]),
        ("best_latency", [1.0, -inf]),
        ("worst", [-inf, inf]),
        ("middle", [5.0, 5.0]),
    ]
    assert pareto_front(points, MAX_MIN) == ["best_throughput", "best_latency", "middle"]
    # two equal infinite points are a tie: both stay
    assert pareto_front([("a", [inf, 1.0]), ("b", [inf, 1.0])], MAX_MIN) == ["a", "b"]


def test_three_objectives() -> None:
    directions = ["maximize", "minimize", "minimize"]  # throughput, latency, memory
    points = [
        (0, [100.0, 10.0, 500.0]),
        (1, [100.0, 10.0, 400.0]),   # dominates 0 (less memory)
        (2, [90.0, 5.0, 600.0]),     # trade-off
        (3, [80.0, 6.0, 700.0]),     # dominated by 2
        (4, [120.0, 20.0, 300.0]),   # trade-off
    ]
    assert pareto_front(points, directions) == [1, 2, 4]


def test_front_members_are_mutually_non_dominated_and_cover_the_rest() -> None:
    rng = np.random.default_rng(7)
    directions = ["maximize", "minimize", "maximize"]
    points = [(i, v.tolist()) for i, v in enumerate(rng.normal(size=(60, 3)))]
    front = pareto_front(points, directions)
    values = dict(points)
    for i in front:
        for j in front:
            assert not dominates(values[i], values[j], directions)
    for k, v in points:
        if k not in front:
            assert any(dominates(values[i], v, directions) for i in front)


@pytest.mark.parametrize("n_objectives", [2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(n_objectives: int, seed: int) -> None:
    rng = np.random.default_rng(seed * 10 + n_objectives)
    directions = list(rng.choice(["maximize", "minimize"], size=n_objectives))
    # small integer grid: plenty of ties and of equal coordinates
    raw = rng.integers(0, 6, size=(80, n_objectives)).astype(float)
    raw[rng.random(raw.shape) < 0.02] = np.nan
    raw[rng.random(raw.shape) < 0.02] = np.inf
    raw[rng.random(raw.shape) < 0.02] = -np.inf
    points = [(i, row.tolist()) for i, row in enumerate(raw)]
    assert pareto_front(points, directions) == _brute_front(points, directions)


@pytest.mark.parametrize("n_objectives", [2, 3, 4])
def test_matches_brute_force_continuous(n_objectives: int) -> None:
    rng = np.random.default_rng(100 + n_objectives)
    directions = ["maximize" if i % 2 == 0 else "minimize" for i in range(n_objectives)]
    points = [(f"t{i}", row.tolist()) for i, row in
              enumerate(rng.lognormal(size=(150, n_objectives)))]
    front = pareto_front(points, directions)
    assert front == _brute_front(points, directions)
    assert front  # a non-empty set of finite points always has a front
