"""`--recipe auto`: the budget search end to end on a slice of real Fashion-MNIST with one epoch
per training stage (the point is the mechanics, not the accuracy), its chosen recipe re-run without
a search, a resumed study, the best-so-far path when no trial is within the budget, and bad input."""
import json

import pytest

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.recipe import load_recipe
from slimpipe.stages import STAGES
from tests.test_cli import fashion_slice, needs_fashion

FAST = ["train.epochs=1", "prune.epochs=1", "structured_prune.final_epochs=1", "quantize.epochs=1",
        "quantize.min_agreement=0", "quantize.parity_samples=32", "quantize.representative_samples=32",
        "export.min_agreement=0", "export.parity_samples=32", 'export.formats=["tflite"]',
        "benchmark.min_runs=2", "benchmark.warmup=1", "benchmark.min_seconds=0", "benchmark.passes=2",
        "benchmark.sparse_kernels=false", "sensitivity.examples=64"]


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory):
    """480 training and 128 test images of the real Fashion-MNIST."""
    return fashion_slice(tmp_path_factory.mktemp("data") / "fashion_slice.npz", 480)


def search(data_npz, out, *extra, objective="size", trials=1, max_drop="100", sets=()):
    args = ["compress", "--model", "cnn", "--dataset", f"npz:{data_npz}", "--recipe", "auto",
            "--objective", objective, "--max-drop", max_drop, "--trials", str(trials), "--validation", "0.25",
            "--out", str(out), *extra]
    for item in [*FAST, *sets]:
        args += ["--set", item]
    return main(args)


def report(out):
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def size_search(data_npz, tmp_path_factory):
    """A size search with one trial, its settings alone in the final run: (exit code, OUT). The
    final run's other candidates (a step further, a step back) are the impossible budget's test."""
    out = tmp_path_factory.mktemp("auto") / "auto"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMPIPE_QUIET", "1")
        return search(data_npz, out, "--candidates", "1", trials=1), out


@needs_fashion
@pytest.mark.slow
def test_size_search_chooses_a_file_on_the_validation_split_and_writes_its_recipe(size_search):
    rc, out = size_search
    assert rc == 0
    rep = report(out)
    s = rep["search"]
    assert s["objective"] == "size" and len(s["trials"]) == 1 and s["stats"]["ran"] == 1
    assert s["validation"] == {"fraction": 0.25, "seed": 0, "examples": 120, "of": 480}
    assert rep["data"]["train_examples"] == 360 and rep["data"]["test_examples"] == 128
    layers = [r["name"] for r in s["sensitivity"]["layers"]]
    assert layers[0] == "conv1" and layers[-1] == "logits"  # stem and logits are candidates too
    chosen = s["chosen"]
    names = {r["name"]: r for r in rep["artifacts"]}
    assert chosen["file"] in names and chosen["feasible"]
    verdict = s["verdict"]
    assert verdict["met"] and verdict["file"] in names and names[verdict["file"]]["format"] == "tflite"
    base = names[rep["baseline"]]["accuracy"]
    assert verdict["test_drop"] == pytest.approx((base - names[verdict["file"]]["accuracy"]) * 100, abs=1e-3)
    val = verdict["validation_accuracy"]  # every final TFLite file and the baseline, on the validation split
    assert rep["baseline"] in val and verdict["file"] in val
    assert verdict["validation_drop"] == pytest.approx((val[rep["baseline"]] - val[verdict["file"]]) * 100, abs=1e-3)
    # the final run quantizes in the trial's mode (QAT) and post-training, both scored on validation
    assert [c["role"] for c in s["candidates"]] == ["chosen"]
    assert {"clustered.pcqat.per-tensor.sparse.tflite", "clustered.int8.sparse.tflite"} <= set(val)
    md = (out / "report.md").read_text()
    assert "## Budget search" in md and "## Sensitivity" in md
    assert (out / "search_front.png").stat().st_size > 0 and (out / "sensitivity.png").stat().st_size > 0

    recipe = load_recipe(str(out / "chosen.toml"), STAGES)
    assert recipe.validation == 0.25 and [s.stage.name for s in recipe][0] == "train"
    prune = next(step.stage for step in recipe if step.stage.name == "prune")
    assert prune.layer_sparsity and all(not sel.startswith("@") for sel, _ in prune.layer_sparsity)


@needs_fashion
@pytest.mark.slow
def test_the_chosen_recipe_reruns_without_a_search_to_the_same_files(size_search, data_npz, tmp_path):
    rc, out = size_search
    rep = report(out)
    names = {r["name"]: r for r in rep["artifacts"]}
    again = tmp_path / "again"  # the chosen recipe alone, no search, no --set: the same files
    assert rc == 0
    assert main(["compress", "--model", "cnn", "--dataset", f"npz:{data_npz}", "--recipe",
                 str(out / "chosen.toml"), "--out", str(again)]) == 0
    rerun = {r["name"]: r for r in report(again)["artifacts"]}
    assert "search" not in report(again)
    files = [n for n in names if n.endswith(".tflite")]
    assert rep["search"]["verdict"]["file"] in files and "trained.tflite" in files
    for name in files:
        assert rerun[name]["sha256"] == names[name]["sha256"], name


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("objective", ["latency", "balanced"])
def test_latency_and_balanced_searches(data_npz, tmp_path, objective):
    out = tmp_path / objective
    assert search(data_npz, out, "--candidates", "1", objective=objective) == 0
    s = report(out)["search"]
    assert [c["role"] for c in s["candidates"]] == ["chosen"]
    assert s["objective"] == objective and s["chosen"]["latency_ratio"] > 0
    steps = [step.stage.name for step in load_recipe(str(out / "chosen.toml"), STAGES)]
    assert "structured_prune" in steps and ("prune" in steps) == (objective == "balanced")


@needs_fashion
@pytest.mark.slow
def test_an_impossible_budget_still_writes_the_best_so_far_and_exits_1(data_npz, tmp_path, capsys):
    out = tmp_path / "impossible"
    # 90% of the multiply-adds gone: the files lose accuracy, and a budget of 0 points cannot be
    # met. The trial slack lets the trial count, so the final run first goes a step further,
    # finds no file within the budget on the validation split, and runs again with a step back.
    rc = search(data_npz, out, "--candidates", "2", "--trial-slack", "100", objective="latency", max_drop="0",
                sets=["structured_prune.reduction=0.9"])
    assert rc == 1
    rep = report(out)
    s = rep["search"]
    assert s["chosen"]["feasible"] and not s["verdict"]["met"] and not s["verdict"]["validation_met"]
    chosen, further, back = s["candidates"]
    assert [further["role"], back["role"], back.get("added")] == ["further", "back", True]
    assert back["params"]["reduction"] < chosen["params"]["reduction"] < further["params"]["reduction"]
    names = {r["name"] for r in rep["artifacts"]}
    for c in (further, back):  # each candidate in every post-training int8 mode, scored on validation
        tagged = {n for n in names if n.startswith(f"structured.{c['tag']}.") and n.endswith(".tflite")}
        assert {f"structured.{c['tag']}.{m}.tflite" for m in ("dynamic", "int8")} <= tagged
        assert all(n in s["verdict"]["validation_accuracy"] for n in tagged)
    assert f"*.{back['tag']}.*" in (out / "chosen.toml").read_text()
    assert "added when no file of the others held the budget" in (out / "report.md").read_text()
    assert "no file of the final run was within 0 points on the validation split" in s["verdict"]["text"]
    assert s["verdict"]["validation_drop"] > 0
    [row] = [r for r in rep["artifacts"] if r["name"] == s["verdict"]["file"]]
    assert (out / row["path"]).is_file()
    printed = capsys.readouterr().out
    assert "a step back from the chosen settings" in printed and "no file of the final run was within 0 points" in printed


@needs_fashion
@pytest.mark.slow
def test_two_local_workers_take_trials_from_one_study(data_npz, tmp_path):
    out = tmp_path / "jobs"
    assert search(data_npz, out, "--jobs", "2", "--candidates", "1", trials=2) == 0
    s = report(out)["search"]
    assert s["jobs"] == 2 and s["stats"]["worker_exit_codes"] == [0, 0]
    assert (s["stats"]["ran"], s["stats"]["failed"], s["stats"]["reused_trials"]) == (2, 0, 0)
    assert s["stats"]["seconds_per_trial"] > 0
    assert sorted(t["number"] for t in s["trials"]) == [0, 1]  # the count, each number once
    assert s["trials"][0]["params"] != s["trials"][1]["params"]  # the starting point ran once
    assert all(t["worker"] for t in s["trials"])
    assert s["chosen"]["number"] in (0, 1) and (out / "chosen.toml").is_file()
    assert not list((out / "search" / "workers").glob("*"))  # the workers' heartbeats are gone


def test_join_needs_a_running_search(tmp_path, capsys):
    assert main(["join", str(tmp_path)]) == 2
    assert "no search is running in" in capsys.readouterr().err


@needs_fashion
@pytest.mark.parametrize("extra, message", [
    (["--max-drop", "-1"], "--max-drop must be between 0 and 100"),
    (["--max-drop", "101"], "--max-drop must be between 0 and 100"),
    (["--objective", "fast"], "--objective must be one of size, latency, balanced"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--time-budget", "0m"], "--time-budget must be longer than zero"),
    (["--validation", "1"], "--validation must be a fraction"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--trial-slack", "-1"], "--trial-slack must be between 0 and 100"),
    (["--candidates", "0"], "--candidates must be between 1 and 3"),
])
def test_bad_search_options(data_npz, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    args = ["compress", "--dataset", f"npz:{data_npz}", "--recipe", "auto", "--out", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_search_options_need_recipe_auto(capsys):
    assert main(["compress", "--max-drop", "0.5"]) == 2
    assert "--max-drop is an option of the budget search: add --recipe auto" in capsys.readouterr().err


@needs_fashion
def test_a_model_with_nothing_to_prune_is_refused_before_training(data_npz, tmp_path, capsys):
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, name="logits")])
    path = tmp_path / "gap.h5"
    model.save(path)
    out = tmp_path / "out"
    assert main(["compress", "--model", str(path), "--dataset", f"npz:{data_npz}", "--recipe", "auto",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no prunable layer" in err and len(err.splitlines()) == 1
    assert not out.exists()
