"""benchmarks/targets.toml: the product's measured targets, each checked only against a run its
own command made, through the release gate."""
import json

import pytest

from slimpipe.benchmarks.targets import Target, check_target, load_targets, mismatch
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.thresholds import CHECK_KEYS
from tests.pipeline.test_gate import make_report


def test_the_shipped_targets_load_and_each_checks_something():
    targets = load_targets()
    assert len({t.name for t in targets}) == len(targets)
    for t in targets:
        assert any(k in t.gate for k in CHECK_KEYS), t.name
        assert t.options()["model"] and t.options()["recipe"]
    searches = [t for t in targets if t.options()["recipe"] == "auto"]
    assert searches and all(t.gate.get("artifact") == "chosen" and "max_minutes" in t.gate for t in searches)


def test_a_command_maps_to_compress_options_as_the_command_line_parses_them():
    t = Target("x", "make compress RECIPE=auto MAX_DROP=0.5 SEED=1 TIME_BUDGET=18m SKIP_BAD_IMAGES=1 OUT=runs/x",
               "x", {"max_bytes": 1})
    assert t.words()[:6] == ["--model", "cnn", "--dataset", "fashion_mnist", "--recipe", "auto"]
    assert "--skip-bad-images" in t.words() and "1" not in t.words()[t.words().index("--skip-bad-images"):][1:2]
    options = t.options()
    assert (options["max_drop"], options["seed"], options["time_budget"], options["out"]) == (0.5, 1, 1080.0, "runs/x")
    assert options["objective"] == "size" and options["trials"] == 12  # the search's defaults, filled
    with pytest.raises(ConfigError, match="must start with 'make compress'"):
        Target("y", "slimpipe compress", "y", {}).options()
    with pytest.raises(ConfigError, match="expected VAR=value"):
        Target("y", "make compress seed", "y", {}).options()
    with pytest.raises(ConfigError, match="unrecognized arguments: --sed 1: fix its command"):
        Target("y", "make compress SED=1", "y", {}).options()


def test_a_bad_targets_file_is_refused(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text('[[target]]\nname = "a"\ncommand = "make compress"\nrun = "a"\ngate = { max_byts = 1 }\n')
    with pytest.raises(ConfigError, match="unknown gate keys"):
        load_targets(path)
    path.write_text('[[target]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="lacks command, run, gate"):
        load_targets(path)


def _run(tmp_path, argv):
    report = make_report()
    report["run"] = {"argv": argv}
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return tmp_path / "runs"


def test_a_target_is_checked_only_against_a_run_of_its_command(tmp_path):
    target = Target("t", "make compress SEED=1 MAX_DROP=0.5 OUT=runs/r", "r", {"min_gzip_ratio": 11.0})
    assert "make it with `make compress SEED=1" in check_target(target, tmp_path).skipped
    runs = _run(tmp_path, ["slimpipe", "compress", "--model", "cnn", "--dataset", "fashion_mnist",
                           "--recipe", "default", "--out", "elsewhere", "--seed", "1", "--max-drop", "0.50"])
    outcome = check_target(target, runs)  # --out aside, the same options (0.50 is 0.5)
    assert outcome.mismatch is None and outcome.passed and outcome.results[0].measured > 11
    strict = Target("t", target.command, "r", {"min_gzip_ratio": 12.0})
    assert not check_target(strict, runs).passed


def test_a_run_with_other_options_is_a_mismatch(tmp_path):
    runs = _run(tmp_path, ["slimpipe", "compress", "--model", "cnn", "--dataset", "fashion_mnist",
                           "--recipe", "default", "--seed", "2", "--epochs", "1"])
    target = Target("t", "make compress SEED=1", "r", {"max_bytes": 10**9})
    outcome = check_target(target, runs)
    assert not outcome.passed and outcome.results == []
    assert "--epochs 1 (the target: (not given))" in outcome.mismatch and "--seed 2 (the target: 1)" in outcome.mismatch
    seed0 = check_target(Target("t", "make compress SEED=0", "r", {"max_bytes": 10**9}), runs)
    assert "--seed 2 (the target: 0)" in seed0.mismatch  # 0 is a value, not "not given"
    assert mismatch(target, {"run": {}}) == "the report does not record the command that made it"
    garbled = mismatch(target, {"run": {"argv": ["slimpipe", "compress", "--seed", "one"]}})
    assert "is not one slimpipe reads" in garbled and "invalid int value: 'one'" in garbled


def test_one_run_spelled_two_ways_or_with_a_default_left_out_matches(tmp_path):
    runs = _run(tmp_path, ["slimpipe", "compress", "--recipe=auto", "--max-drop", "0.50", "--objective", "size",
                           "--time-budget", "1080s", "--out", "runs/r"])
    target = Target("t", "make compress RECIPE=auto MAX_DROP=0.5 SEED=0 TIME_BUDGET=18m OUT=runs/r", "r",
                    {"max_bytes": 10**9})
    assert mismatch(target, json.loads((runs / "r" / "report.json").read_text())) is None
