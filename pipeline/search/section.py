"""The report's "Budget search" section and its two plots, from report["search"].

>>> [s.title for s in search_sections(report)]
['Budget search', 'Sensitivity']
"""
from __future__ import annotations

import io
from typing import Any, Mapping

from slimpipe.pipeline.document import Bullets, Cell, Figure, Figures, Paragraph, Section, Table, code
from slimpipe.pipeline.pareto import pareto_front
from slimpipe.pipeline.rows import fmt_bytes, fmt_num
from slimpipe.pipeline.search.space import settings_text

Report = Mapping[str, Any]
TRIAL_HEAD = ["trial", "settings", "file", "validation accuracy", "Δ acc (pts)", "gzip bytes",
              "x smaller (gzip)", "x faster", "within budget", "on front", "seconds"]
SEARCH_PLOTS = {"search_front.png": "Every file of every trial: cost against validation accuracy, "
                                    "the Pareto front and the chosen file",
                "sensitivity.png": "Accuracy lost when one layer alone is pruned, per layer"}
COST = {"size": "gzip size / dense float TFLite", "latency": "p50 latency / dense float TFLite",
        "balanced": "geometric mean of size and latency ratios"}
_ROLES = {"further": "a step further than the chosen trial", "back": "a step back from the chosen trial"}
_ADDED = ", added when no file of the others held the budget on the validation split"


def front(search: Mapping[str, Any]) -> list[tuple[int, str, float, float]]:
    """(trial, file, cost, validation accuracy) of every trial's files on the Pareto front."""
    points = [(t["number"], p[0], p[1], p[2]) for t in search.get("trials", []) for p in t.get("points") or []]
    keep = set(pareto_front([(f"{n}/{f}", c, a) for n, f, c, a in points]))
    return sorted((p for p in points if f"{p[0]}/{p[1]}" in keep), key=lambda p: p[2])


def search_sections(report: Report, plots: set[str] = frozenset()) -> list[Section]:
    search = report.get("search")
    if not search:
        return []
    chosen = search.get("chosen") or {}
    verdict = search.get("verdict") or {}
    val = search.get("validation") or {}
    stats = search.get("stats") or {}
    phases = search.get("phases_s") or {}
    items = [f"Objective: **{search['objective']}** ({COST[search['objective']]}), at most "
             f"{search['max_drop']:g} points below the baseline",
             f"Decisions on a validation split: {fmt_num(val.get('examples'))} of {fmt_num(val.get('of'))} "
             f"training examples (a share {fmt_num(val.get('fraction'))} of each class, seed "
             f"{fmt_num(val.get('seed'))}), never trained on; baseline {fmt_num(search.get('baseline_validation_accuracy'), '.2%')} "
             "on it. The test set scores the final run once.",
             f"Trials: {len(search.get('trials', []))} finished ({fmt_num(stats.get('ran'))} run now, "
             f"{fmt_num(stats.get('reused_trials'))} from the study in {code(search.get('storage', '')).value}, "
             f"{fmt_num(stats.get('failed'))} failed, {fmt_num(stats.get('retried'))} retried after an interruption); "
             f"{fmt_num(stats.get('seconds_per_trial'))} s per trial run now",
             "Time per phase (s): " + ", ".join(f"{k} {fmt_num(v, ',.0f')}" for k, v in phases.items()),
             f"Chosen: trial {chosen.get('number')} ({settings_text(chosen.get('params') or {})}), "
             f"{code(chosen.get('file') or '-').value} at {fmt_num(None if chosen.get('drop') is None else -chosen['drop'], '+.2f')} points on validation; "
             f"run again with the full schedule as {code(search.get('recipe', 'chosen.toml')).value}",
             *[f"Another candidate of the final run ({_ROLES.get(c['role'], c['role'])}"
               f"{_ADDED if c.get('added') else ''}, a branch from the baseline with the full schedule; its "
               f"files are named {code('*.' + c['tag'] + '.*').value}): {settings_text(c['params'])}"
               for c in (search.get("candidates") or [])[1:]],
             f"Trials counted a file within {fmt_num(search.get('trial_budget'), 'g')} points (the budget plus "
             "--trial-slack: their short fine-tuning understates the final run); the final run's TFLite "
             "files were scored on the validation split and the best within the budget there is the answer",
             f"Verdict: {verdict.get('text', '-')}"]
    on_front = {(n, f) for n, f, _, _ in front(search)}
    rows = []
    for t in sorted(search.get("trials", []), key=lambda t: t["number"]):
        mark = t["number"] == chosen.get("number")
        rows.append([Cell(str(t["number"]), "strong") if mark else str(t["number"]), settings_text(t["params"]),
                     code(t.get("file") or "-"), fmt_num(t.get("accuracy"), ".2%"),
                     fmt_num(None if t.get("drop") is None else -t["drop"], "+.2f"),
                     fmt_bytes(t.get("gzip_bytes")), _x(t.get("size_ratio")), _x(t.get("latency_ratio")),
                     "yes" if t.get("feasible") else "no", "yes" if (t["number"], t.get("file")) in on_front else "",
                     fmt_num(t.get("seconds"), ".0f")])
    blocks = [Bullets(items, id="search"),
              Table("search-trials", TRIAL_HEAD, rows, {3, 4, 5, 6, 7, 10},
                    caption="Each trial's best file within the budget (or, with none, its most accurate "
                            "file), scored on the validation split after short fine-tuning; x ratios "
                            "against the dense float TFLite file of the same trial:")]
    figures = [Figure(n, alt) for n, alt in SEARCH_PLOTS.items() if n in plots]
    if figures:
        blocks.append(Figures(figures))
    return [Section("Budget search", blocks), sensitivity_section(search["sensitivity"])]


def sensitivity_section(table: Mapping[str, Any]) -> Section:
    base = table["baseline_accuracy"]
    layers = table["layers"]
    prune_keys = sorted(layers[0]["prune"], key=float) if layers else []
    cluster_keys = sorted(layers[0]["cluster"], key=int, reverse=True) if layers else []
    head = ["layer", "weights", *[f"{k} zeros" for k in prune_keys], *[f"{k} clusters" for k in cluster_keys], "int8"]
    rows = []
    for r in layers:
        rows.append([code(r["name"]), fmt_num(r["weights"], ","),
                     *[_drop(base, r["prune"][k]) for k in prune_keys],
                     *[_drop(base, r["cluster"][k]) for k in cluster_keys],
                     _drop(base, r.get("int8"))])
    note = (f"Points of validation accuracy lost (baseline {base:.2%} on {table['examples']} examples) "
            "when only that layer's kernel is pruned by magnitude, clustered (k-means) or rounded to "
            f"int8 per channel, without fine-tuning; {table['seconds']:.0f} s. The search allocates "
            "sparsity to the layers that lose least per weight removed, and more clusters to a "
            "layer that loses more than its tolerance.")
    return Section("Sensitivity", [Paragraph(note), Table("sensitivity", head, rows,
                                                          set(range(1, len(head))))])


def _drop(base: float, acc) -> str:
    return "–" if acc is None else f"{(base - acc) * 100:.2f}"


def _x(ratio) -> str:
    return "–" if not ratio else f"{1 / ratio:.2f}x"


def plot_search(report: Report) -> dict[str, bytes]:
    """PNG bytes of search_front.png and sensitivity.png (none without a search)."""
    search = report.get("search")
    if not search:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    points = [(t["number"], p[0], p[1], p[2]) for t in search.get("trials", []) for p in t.get("points") or []]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        ax.scatter([p[2] for p in points], [p[3] * 100 for p in points], s=14, color="0.6", label="trial files")
        fr = front(search)
        ax.plot([p[2] for p in fr], [p[3] * 100 for p in fr], "-o", ms=4, color="tab:blue", label="Pareto front")
        chosen = search.get("chosen") or {}
        hit = [p for p in points if p[0] == chosen.get("number") and p[1] == chosen.get("file")]
        if hit:
            ax.scatter([hit[0][2]], [hit[0][3] * 100], s=80, marker="*", color="tab:red", label="chosen", zorder=3)
        base = search.get("baseline_validation_accuracy")
        if base is not None:
            ax.axhline(base * 100 - search["max_drop"], ls="--", color="tab:red", lw=1, label="budget")
        ax.set_xscale("log")
        ax.set_xlabel(COST[search["objective"]] + " (log scale)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"Search: {report.get('model')} on {report.get('dataset')}")
        ax.legend(fontsize=8)
        out["search_front.png"] = _png(fig, plt)
    table = search.get("sensitivity") or {}
    if table.get("layers"):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for r in table["layers"]:
            keys = sorted(r["prune"], key=float)
            ax.plot([float(k) for k in keys], [(table["baseline_accuracy"] - r["prune"][k]) * 100 for k in keys], "-o", ms=3,
                    label=f"{r['name']} ({r['weights']:,})")
        ax.set_xlabel("sparsity of that layer alone")
        ax.set_ylabel("validation points lost (no fine-tuning)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title("Sensitivity to pruning, one layer at a time")
        ax.legend(fontsize=7, ncol=2)
        out["sensitivity.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
