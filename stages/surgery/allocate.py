"""Allocation: which channels to keep so that a cost meets its budget."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from slimpipe.stages.surgery.graph import Group


def round_up(n: int, size: int, *, min_channels: int, round_to: int) -> int:
    """Channels kept: at least min_channels, a multiple of round_to, at most the original size."""
    n = max(n, min_channels)
    return min(size, -(-n // round_to) * round_to)


def select_channels(groups: list[Group], scores: Mapping[str, np.ndarray],
                    cost: Callable[[Mapping[str, int]], float], budget: float, *,
                    sizes: Mapping[str, int] | None = None, min_channels: int = 4,
                    round_to: int = 1, cost_exponent: float = 0.0,
                    floors: Mapping[str, int] | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Global ranking: drop the channels with the lowest normalized score, across all groups,
    until cost(kept channel counts) <= budget. Returns ({group id: kept indices}, reached).

    Scores are divided by their group's mean so that layers of different fan-in compare;
    kept counts are rounded up to multiples of `round_to` and never go below `min_channels`.
    With `cost_exponent` e > 0 the ranking is cost-aware: one channel at a time goes from the
    group whose next channel has the lowest score / saving**e, where saving is what removing it
    takes off the cost right now (e = 1: score per unit of cost saved). A MAC budget then cuts
    the wide-map convs, where a channel saves most, before the dense layers, where it saves little.
    `floors` ({group id: channels}) raises min_channels for the groups it names.
    """
    sizes = dict(sizes or {g.id: g.size for g in groups})
    floor = {g.id: max(min_channels, int((floors or {}).get(g.id, 0))) for g in groups}
    if cost_exponent > 0:
        return _select_cost_aware(groups, scores, cost, budget, sizes, floor, round_to, cost_exponent)
    order, owner = [], []
    for gi, g in enumerate(groups):
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = float(s.mean()) if s.size and s.mean() > 0 else 1.0
        removable = max(0, sizes[g.id] - min(sizes[g.id], floor[g.id]))
        lowest = np.sort(s)[:removable] / mean
        order.extend(lowest)
        owner.extend([gi] * len(lowest))
    rank = np.argsort(np.asarray(order), kind="stable")
    owner_sorted = np.asarray(owner, dtype=np.int64)[rank]

    def counts_at(k: int) -> dict[str, int]:
        removed = np.bincount(owner_sorted[:k], minlength=len(groups))
        return {g.id: round_up(sizes[g.id] - int(removed[i]), sizes[g.id], min_channels=floor[g.id],
                               round_to=round_to) for i, g in enumerate(groups)}

    lo, hi = 0, len(rank)
    if cost(counts_at(hi)) > budget:
        lo = hi
    while lo < hi:  # the smallest k that meets the budget (cost only falls as k grows)
        mid = (lo + hi) // 2
        if cost(counts_at(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    counts = counts_at(lo)
    return _highest(groups, scores, counts, sizes), cost(counts) <= budget


def _highest(groups, scores, counts, sizes) -> dict[str, np.ndarray]:
    """{group id: indices of its counts[id] highest-scoring channels, sorted} for the groups
    that lose channels."""
    return {g.id: np.sort(np.argsort(-np.asarray(scores[g.id]), kind="stable")[:counts[g.id]])
            for g in groups if counts[g.id] < sizes[g.id]}


def _select_cost_aware(groups, scores, cost, budget, sizes, floor, round_to, exponent):
    ranked = {}  # group id -> its normalized scores, lowest first
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = float(s.mean()) if s.size and s.mean() > 0 else 1.0
        ranked[g.id] = np.sort(s) / mean
    counts = dict(sizes)  # unrounded counts; the budget is checked on the rounded ones

    def rounded(c):
        return {g.id: round_up(c[g.id], sizes[g.id], min_channels=floor[g.id], round_to=round_to)
                for g in groups}

    while cost(rounded(counts)) > budget:
        now = cost(counts)
        best, best_priority = None, np.inf
        for g in groups:
            n = counts[g.id]
            if n <= min(sizes[g.id], floor[g.id]):
                continue
            saving = now - cost({**counts, g.id: n - 1})
            priority = ranked[g.id][sizes[g.id] - n] / max(float(saving), 1e-12) ** exponent
            if priority < best_priority:
                best, best_priority = g.id, priority
        if best is None:
            break
        counts[best] -= 1
    final = rounded(counts)
    return _highest(groups, scores, final, sizes), cost(final) <= budget
