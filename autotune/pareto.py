"""Pareto fronts as pure functions (no storage, no plotting)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "minimize":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(points: Sequence[tuple[K, Sequence[float]]],
                 directions: Sequence[str]) -> list[K]:
    """Keys of the non-dominated points, in input order.

    Points with equal values are all kept (neither dominates the other). Points with a NaN
    value are never on the front.
    """
    valid = [(k, v) for k, v in points if not any(math.isnan(x) for x in v)]
    return [k for k, v in valid
            if not any(dominates(w, v, directions) for _, w in valid)]
