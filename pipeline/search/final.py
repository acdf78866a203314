"""The final run of a budget search: its recipe (the chosen settings and their neighbours with the
full schedule), and its answer, the best file on the validation split, with a verdict.

>>> steps, candidates = final_steps(space, chosen, others, table=table, tolerance=0.25,
...                                 start="train", outputs={"prune": "pruning", ...})
>>> verdict = final_choice(report, search_record, search_data, out)
>>> verdict["met"], verdict["text"]
(True, 'within the budget of 0.5 points: clustered.pcqat.per-tensor.sparse.tflite, 20.5x smaller ...')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.search.space import FULL, Space, branch, name_steps, settings_text, tag_of


def final_steps(space: Space, chosen: Mapping[str, Any], others: list[dict[str, Any]], *, table, tolerance: float,
                start: str, outputs: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chosen trial's settings as steps with the full schedule, a branch from the baseline
    (`start`) for each of `others` ({"role", "params"}: neighbours further or back), and the
    candidates' settings, roles and file tags: which one holds the budget is measured."""
    steps = name_steps(space.steps(chosen["params"], table, schedule=FULL, tolerance=tolerance))
    candidates = [{"role": "chosen", "params": dict(chosen["params"]), "tag": None}]
    extra = []
    for other in others:
        tag = tag_of(space, other["params"])
        extra += branch(space.steps(other["params"], table, schedule=FULL, tolerance=tolerance), tag,
                        start=start, outputs=outputs)
        candidates.append({**other, "tag": tag})
    tail = next(i for i, s in enumerate(steps) if s["stage"] in ("export", "benchmark"))
    return [*steps[:tail], *extra, *steps[tail:]], candidates


def header(args, chosen, candidates) -> str:
    """chosen.toml's opening comment: where it comes from and how to run it again."""
    other = "".join(f"\n# and a branch from the baseline with {settings_text(c['params'])} (its files are "
                    f"named *.{c['tag']}.*)" for c in candidates[1:])
    return (f"# Written by `slimpipe compress --recipe auto --objective {args.objective} --max-drop "
            f"{args.max_drop:g}` for model {args.model} on {args.dataset} (seed {args.seed}):\n"
            f"# trial {chosen['number']} of the search, {settings_text(chosen['params'])}, with the full "
            f"fine-tuning schedule{',' if other else ''}{other}.\n# The report's verdict names the file that "
            "holds the budget on the validation split.\n# Re-run it without a search: slimpipe compress --recipe THIS_FILE "
            "(same --model, --dataset and --seed).\n\n")


def description(args, candidates) -> str:
    return (f"Found by a budget search ({args.objective}, at most {args.max_drop:g} points lost on a "
            f"validation split): {' and '.join(settings_text(c['params']) for c in candidates)}.")


def final_choice(report: Mapping[str, Any], record: Mapping[str, Any], search_data, out: Path) -> dict[str, Any]:
    """The deliverable of the final run, chosen on the validation split, with its test figures.

    Trials fine-tune briefly, so their files rank settings but understate what the full
    schedule reaches: every TFLite file of the final run (and the baseline) is scored on the
    validation split, the best one within the budget there is the answer (`score`), and its
    test-set accuracy is what the verdict reports."""
    from slimpipe.benchmarks.accuracy import accuracy, predict_all
    from slimpipe.benchmarks.runtimes import open_runtime
    from slimpipe.pipeline.rows import EPS, deployable, reference_for
    from slimpipe.pipeline.search.score import cost_of, score

    rows = report["artifacts"]
    x, y = search_data.x_test, search_data.y_test
    val = {}
    for r in rows:
        if r["name"] == report.get("baseline") or (r["format"] == "tflite" and deployable(r)):
            runtime = open_runtime(out / r["path"], r["format"], threads=0)
            val[r["name"]] = accuracy(predict_all(runtime, x), y)
    budget = record["max_drop"]
    on_val = score({**report, "artifacts": [{**r, "accuracy": val.get(r["name"])} for r in rows]},
                   objective=record["objective"], max_drop=budget)
    byname = {r["name"]: r for r in rows}
    row, base = byname.get(on_val.file), byname.get(report.get("baseline"))
    ref = reference_for({"format": "tflite"}, rows, report.get("baseline"))
    if row is None or base is None or ref is None or row.get("accuracy") is None:
        return {"met": False, "validation_met": False, "file": on_val.file, "validation_accuracy": val,
                "text": "not within the budget: the final run has no measured TFLite file to choose"}
    drop = (base["accuracy"] - row["accuracy"]) * 100
    cost, size, latency = cost_of(row, ref, record["objective"])
    met = on_val.feasible and drop <= budget + EPS * 100
    parts = ([f"{1 / size:.1f}x smaller by gzip"] if size else []) + (
        [f"{1 / latency:.2f}x faster at p50"] if latency else [])
    figures = (f"{', '.join(parts)} than the dense float TFLite file, {-drop:+.2f} points on the test set "
               f"({-on_val.drop:+.2f} on the validation split)")
    if met:
        text = f"within the budget of {budget:g} points: {row['name']}, {figures}"
    elif not on_val.feasible:
        text = (f"not within the budget: no file of the final run was within {budget:g} points on the "
                f"validation split; the closest missed it by {on_val.drop - budget:.2f} points: "
                f"{row['name']}, {figures}")
    else:
        text = f"not within the budget on the test set, by {drop - budget:.2f} points: {row['name']}, {figures}"
    return {"met": met, "validation_met": on_val.feasible, "file": row["name"], "test_drop": round(drop, 4),
            "test_accuracy": row["accuracy"], "baseline_test_accuracy": base["accuracy"], "validation_drop": on_val.drop,
            "validation_accuracy": val, "size_ratio": size, "latency_ratio": latency, "cost": cost,
            "text": text}
