"""The learning-vs-forgetting Pareto front.

A point is (target bpb, source bpb); lower is better on both axes (lower target bpb = more learned, lower source
bpb = less forgotten). A point is *dominated* when another point is at least as good on both axes and strictly
better on one. The Pareto front is the set of points no other point dominates: the only candidates worth choosing,
whatever the user's trade-off.
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as good as ``b`` on both axes and strictly better on one (lower is better)."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, in input order."""
    return [
        i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)
    ]
