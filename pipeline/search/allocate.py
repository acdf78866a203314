"""Per-layer settings from a sensitivity table (`stages.sensitivity`): pure functions, no TensorFlow.

>>> allocate_sparsity(table, 0.9)            # {layer: sparsity}, 90% of all candidate weights zero
{'conv1': 0.5, 'conv2': 0.9, 'fc1': 0.98, 'logits': 0.7}
>>> allocate_clusters(table, 16, tolerance=0.25)   # {layer: clusters}, more where 16 costs > 0.25 points
{'conv1': 64, 'conv2': 16, 'fc1': 16, 'logits': 32}

Sparsity is allocated greedily by marginal cost: every layer starts dense; the next step up its
sparsity ladder is taken for the layer whose accuracy drop per weight removed is the smallest,
until the candidates together reach the target (the last step is cut short to land on it). A
large layer that tolerates pruning is pruned first and hardest; a small sensitive one last.
Drops are measured one layer at a time without fine-tuning, so they rank layers: they do not
predict the accuracy of the fine-tuned model.
"""
from __future__ import annotations

from typing import Any, Mapping

Table = Mapping[str, Any]


def drops(row: Mapping[str, Any], family: str, baseline: float) -> list[tuple[float, float]]:
    """[(setting, points lost)] of one layer's `family` ("prune" or "cluster") ladder, the drop made
    non-decreasing in the setting's severity (a noisy ladder must not reward more pruning)."""
    points = sorted(((float(k), (baseline - acc) * 100) for k, acc in row[family].items()),
                    reverse=(family == "cluster"))  # fewer clusters is more severe
    out, worst = [], 0.0
    for setting, drop in points:
        worst = max(worst, drop)
        out.append((setting, worst))
    return out


def allocate_sparsity(table: Table, target: float, *, max_sparsity: float | None = None) -> dict[str, float]:
    """{layer: sparsity} whose weighted mean over the table's layers is `target` (or as close as
    the ladders allow), chosen greedily by the least accuracy drop per weight removed."""
    base = table["baseline_accuracy"]
    rows = table["layers"]
    ladders = {r["name"]: [(0.0, 0.0)] + [p for p in drops(r, "prune", base)
                                         if max_sparsity is None or p[0] <= max_sparsity + 1e-9]
               for r in rows}
    size = {r["name"]: r["weights"] for r in rows}
    total = sum(size.values())
    level = {name: 0 for name in ladders}
    sparsity = {name: 0.0 for name in ladders}
    want = target * total
    removed = 0.0
    while removed < want - 1e-6:
        best, best_cost = None, None
        for name, ladder in ladders.items():
            if level[name] + 1 >= len(ladder):
                continue
            (s0, d0), (s1, d1) = ladder[level[name]], ladder[level[name] + 1]
            cost = (d1 - d0 + 1e-6) / (size[name] * (s1 - s0))
            if best_cost is None or cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            break  # every layer is at the top of its ladder
        s0, s1 = ladders[best][level[best]][0], ladders[best][level[best] + 1][0]
        gain = size[best] * (s1 - s0)
        if removed + gain > want:  # land on the target inside this step
            sparsity[best] = s0 + (want - removed) / size[best]
            removed = want
            break
        level[best] += 1
        sparsity[best] = s1
        removed += gain
    return {name: round(s, 4) for name, s in sparsity.items()}


def overall_sparsity(table: Table, sparsity: Mapping[str, float]) -> float:
    """The share of the table's layers' weights that `sparsity` sets to zero."""
    size = {r["name"]: r["weights"] for r in table["layers"]}
    total = sum(size.values())
    return sum(size[n] * s for n, s in sparsity.items() if n in size) / total if total else 0.0


def allocate_clusters(table: Table, clusters: int, *, tolerance: float) -> dict[str, int]:
    """{layer: clusters}: `clusters`, or for a layer that alone loses more than `tolerance` points
    at that count, the fewest clusters of its ladder above it that stay within the tolerance (the
    ladder's largest count when none does)."""
    base = table["baseline_accuracy"]
    out = {}
    for row in table["layers"]:
        ladder = sorted((int(k), d) for k, d in drops(row, "cluster", base))  # fewest first
        here = [d for k, d in ladder if k == clusters]
        if not ladder or (here and here[0] <= tolerance) or clusters >= ladder[-1][0]:
            out[row["name"]] = clusters
            continue
        above = [(k, d) for k, d in ladder if k > clusters]
        fits = [k for k, d in above if d <= tolerance]
        out[row["name"]] = fits[0] if fits else max(k for k, _ in above)
    return out
