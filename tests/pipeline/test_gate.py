"""Release gates run on report.json alone: checks, 'best' selection, recipe [gate], exit codes."""
import argparse
import copy
import json
import xml.etree.ElementTree as ET

import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.gate import CheckResult, evaluate, select_artifact
from slimpipe.pipeline.gate_cli import add_gate_parser, run_gate
from slimpipe.pipeline.gate_formats import junit_xml, markdown_summary, text_table


def _lat(p50, runtime="litert", threads=1, batch=1):
    return {"runtime": runtime, "device": "cpu", "threads": threads, "batch": batch,
            "engine": "xnnpack" if runtime == "litert" else "cpu", "p50_ms": p50,
            "p90_ms": round(p50 * 1.2, 6), "p99_ms": round(p50 * 1.5, 6), "runs": 100}


def _row(name, fmt, stage, parent, *, bytes_, gzip, acc, sparsity=0.0, latency=(), mode=None,
         validation=None, sparse=False):
    return {"name": name, "format": fmt, "kind": fmt, "stage": stage, "parent": parent,
            "path": f"01-x/{name}", "sha256": "0" * 64, "bytes": bytes_, "gzip_bytes": gzip,
            "sparsity": sparsity, "accuracy": acc, "top1_agreement": None,
            "latency": list(latency), "validation": validation, "mode": mode,
            "sparse_storage": sparse}


def _ok(diff=1e-6):
    return {"max_abs_diff": diff, "atol": 1e-4, "passed": True, "top1_agreement": 1.0}


def make_report():
    """A realistic run: dense and pruned Keras, four TFLite exports, one ONNX that failed parity."""
    arts = [
        _row("trained.h5", "keras", "train", None, bytes_=900_000, gzip=830_000, acc=0.90,
             latency=[_lat(5.0, "keras")]),
        _row("pruned.h5", "keras", "strip", "trained.h5", bytes_=900_000, gzip=260_000,
             acc=0.895, sparsity=0.8),
        _row("trained.tflite", "tflite", "export", "trained.h5", bytes_=800_000, gzip=700_000,
             acc=0.90, mode="float32", validation=_ok(), latency=[_lat(2.0), _lat(1.1, threads=2)]),
        _row("pruned.tflite", "tflite", "export", "pruned.h5", bytes_=800_000, gzip=200_000,
             acc=0.895, sparsity=0.8, mode="float32", validation=_ok(2e-6),
             latency=[_lat(1.96), _lat(1.0, threads=2)]),
        _row("pruned.sparse.tflite", "tflite", "export", "pruned.h5", bytes_=210_000,
             gzip=150_000, acc=0.895, sparsity=0.8, mode="float32", sparse=True,
             validation=_ok(2e-6), latency=[_lat(4.0)]),
        _row("pruned.int8.tflite", "tflite", "export", "pruned.h5", bytes_=205_000, gzip=60_000,
             acc=0.88, sparsity=0.8, mode="int8", validation=None, latency=[_lat(0.9)]),
        _row("pruned.onnx", "onnx", "export", "pruned.h5", bytes_=790_000, gzip=50_000,
             acc=0.90, sparsity=0.8, mode=None,
             validation={"max_abs_diff": 3e-3, "atol": 1e-4, "passed": False},
             latency=[_lat(1.5, "onnxruntime")]),
    ]
    report = {"slimpipe_version": "0.1.0", "model": "cnn", "dataset": "fashion_mnist",
              "recipe": "default", "baseline": "trained.h5",
              "environment": {"cpu": "test cpu", "cores": 2, "isa": ["avx2"], "gpu": [],
                              "versions": {"tensorflow": "2.21"}},
              "stages": [{"name": "train", "stage": "train", "seconds": 12.5},
                         {"name": "export", "stage": "export", "seconds": 3.0}],
              "artifacts": arts, "notes": ["a note"], "sparsity_and_speed": []}
    return report


@pytest.fixture
def report():
    return make_report()


def by_name(results):
    return {r.name: r for r in results}


# -- selection -------------------------------------------------------------------------------
def test_best_is_smallest_deployable_skipping_failed_parity_and_keras(report):
    row, why = select_artifact(report, {})
    assert row["name"] == "pruned.int8.tflite"  # pruned.onnx is smaller but failed parity
    assert "pruned.int8.tflite" in why and "smallest" in why


def test_best_respects_max_accuracy_drop(report):
    row, why = select_artifact(report, {"max_accuracy_drop": 0.5})
    assert row["name"] == "pruned.sparse.tflite"  # int8 is 2 points down
    assert "0.5 points" in why
    row, _ = select_artifact(report, {"max_accuracy_drop": 2.0})
    assert row["name"] == "pruned.int8.tflite"


def test_best_without_any_deployable_artifact_fails_the_checks(report):
    for r in report["artifacts"]:
        if r["format"] != "keras":
            r["validation"] = {"max_abs_diff": 1.0, "atol": 1e-4, "passed": False}
    [res] = evaluate(report, {"max_gzip_bytes": 10**9})
    assert not res.passed and "no deployable artifact" in res.detail


def test_named_artifact_and_unknown_name(report):
    [res] = evaluate(report, {"artifact": "trained.tflite", "max_bytes": 800_000})
    assert res.artifact == "trained.tflite" and res.passed and res.measured == 800_000
    with pytest.raises(ConfigError, match="unknown artifact 'nope'.*trained.tflite"):
        evaluate(report, {"artifact": "nope", "max_bytes": 1})


# -- each check passes and fails -------------------------------------------------------------
@pytest.mark.parametrize("key, passing, failing, measured", [
    ("max_bytes", 205_000, 204_999, 205_000),
    ("max_gzip_bytes", 60_000, 59_999, 60_000),
    ("min_accuracy", 0.88, 0.881, 0.88),
    ("max_accuracy_drop", 2.0, 1.9, 2.0),
    ("max_p90_ms", 1.08, 1.0, 1.08),
    # against trained.tflite, the dense float32 file of the baseline: 800,000 / 700,000 bytes, p50 2.0 ms
    ("min_bytes_ratio", 3.9, 3.91, 800_000 / 205_000),
    ("min_gzip_ratio", 11.6, 11.7, 700_000 / 60_000),
    ("min_speedup", 2.2, 2.23, 2.0 / 0.9),
    ("max_minutes", 0.26, 0.25, (12.5 + 3.0) / 60),  # the stages' seconds
])
def test_each_check_passes_and_fails(report, key, passing, failing, measured):
    ok = by_name(evaluate(report, {"artifact": "pruned.int8.tflite", key: passing}))[key]
    assert ok.passed and ok.measured == pytest.approx(measured, abs=1e-3) and ok.threshold == passing
    assert ok.artifact == ("the run" if key == "max_minutes" else "pruned.int8.tflite")
    bad = by_name(evaluate(report, {"artifact": "pruned.int8.tflite", key: failing}))[key]
    assert not bad.passed and bad.measured == pytest.approx(measured, abs=1e-3)


def test_ratios_name_the_dense_file_and_fail_without_one(report):
    [gz, fast] = evaluate(report, {"artifact": "pruned.int8.tflite", "min_gzip_ratio": 10, "min_speedup": 2})
    assert "trained.tflite" in gz.detail and "11.67x >= 10x" in gz.detail
    assert "litert, 1 thread, batch 1" in fast.detail and fast.passed
    [slow] = evaluate(report, {"artifact": "pruned.int8.tflite", "min_speedup": 2, "latency_threads": 2})
    assert not slow.passed and slow.measured is None and "no p50 latency" in slow.detail
    report["artifacts"] = [r for r in report["artifacts"] if r["name"] != "trained.tflite"]
    [none] = evaluate(report, {"artifact": "pruned.int8.tflite", "min_gzip_ratio": 1})
    assert not none.passed and "no dense float32 tflite file of baseline trained.h5" in none.detail


def test_the_chosen_artifact_is_the_search_verdicts_file(report):
    with pytest.raises(ConfigError, match="needs the report of a budget search"):
        evaluate(report, {"artifact": "chosen", "max_bytes": 1})
    report["search"] = {"verdict": {"file": "pruned.tflite"}}
    [res] = evaluate(report, {"artifact": "chosen", "max_bytes": 800_000})
    assert res.artifact == "pruned.tflite" and res.passed
    report["search"]["verdict"]["file"] = "gone.tflite"
    with pytest.raises(ConfigError, match="'gone.tflite', which the report's artifacts do not list"):
        evaluate(report, {"artifact": "chosen", "max_bytes": 1})


def test_run_minutes_do_not_depend_on_the_gated_artifact(report):
    report["artifacts"] = [r for r in report["artifacts"] if r["format"] == "keras"]  # nothing deployable
    res = by_name(evaluate(report, {"max_bytes": 1, "max_minutes": 1}))
    assert not res["max_bytes"].passed and "no deployable artifact" in res["max_bytes"].detail
    assert res["max_minutes"].passed and res["max_minutes"].measured == pytest.approx(15.5 / 60, abs=1e-3)


def test_run_minutes_only_from_a_run_measured_from_scratch(report):
    report["stages"][0]["reused"] = True
    [res] = evaluate(report, {"max_minutes": 100})
    assert not res.passed and res.measured is None and "1 of 2 stages were taken from the cache (train)" in res.detail
    # a budget search: its phases, the baseline's training included (the final run reuses it)
    report["search"] = {"stats": {"ran": 12, "reused_trials": 0}, "phases_s": {"total": 1500.0}}
    [res] = evaluate(report, {"max_minutes": 25})
    assert res.passed and res.measured == pytest.approx(25.0) and "baseline included" in res.detail
    report["search"]["stats"] = {"ran": 2, "reused_trials": 10}
    [res] = evaluate(report, {"max_minutes": 25})
    assert not res.passed and "took 10 trials from its study" in res.detail


def test_accuracy_drop_is_in_points_against_the_baseline(report):
    res = by_name(evaluate(report, {"artifact": "pruned.tflite", "max_accuracy_drop": 0.5}))
    drop = res["max_accuracy_drop"]
    assert drop.passed and drop.measured == pytest.approx(0.5)  # 0.90 -> 0.895 (float-safe)
    assert "trained.h5" in drop.detail


def test_latency_at_the_requested_point_and_missing_measurement(report):
    res = evaluate(report, {"artifact": "pruned.tflite", "max_p90_ms": 1.5,
                            "latency_threads": 2})
    assert res[0].passed and res[0].measured == pytest.approx(1.2)
    [missing] = evaluate(report, {"artifact": "pruned.int8.tflite", "max_p90_ms": 100,
                                  "latency_threads": 4})
    assert not missing.passed and missing.measured is None
    assert "no p90 latency" in missing.detail and "4 threads" in missing.detail
    [wrong_runtime] = evaluate(report, {"artifact": "pruned.int8.tflite", "max_p90_ms": 100,
                                        "latency_runtime": "onnxruntime"})
    assert not wrong_runtime.passed and "litert/1 threads/batch 1" in wrong_runtime.detail


def test_latency_checks_read_the_cpu_row_on_the_default_engine(report):
    """The p90 and speed-up checks read the measurement the report's tables show: on the CPU,
    on LiteRT's default engine, not a builtin-kernels (A/B) row or a GPU row listed first."""
    row = next(r for r in report["artifacts"] if r["name"] == "pruned.tflite")
    default = next(l for l in row["latency"] if l["threads"] == 1 and l["batch"] == 1)
    row["latency"] = [{**default, "resolver": "builtin", "p50_ms": 9.0, "p90_ms": 9.0},
                      {**default, "device": "gpu", "p50_ms": 0.01, "p90_ms": 0.01}, *row["latency"]]
    [p90] = evaluate(report, {"artifact": "pruned.tflite", "max_p90_ms": 5.0})
    assert p90.passed and p90.measured == pytest.approx(default["p90_ms"])
    [speed] = evaluate(report, {"artifact": "pruned.tflite", "min_speedup": 0.1})
    assert speed.passed and f"{default['p50_ms']:.4f} ms at" in speed.detail


def test_latency_runtime_defaults_to_the_artifacts_own(report):
    [res] = evaluate(report, {"artifact": "pruned.onnx", "max_p90_ms": 2.0})
    assert res.passed and res.measured == pytest.approx(1.8)  # onnxruntime row


def test_unmeasured_values_fail_with_a_reason(report):
    row = report["artifacts"][5]
    row["bytes"] = row["accuracy"] = None
    res = by_name(evaluate(report, {"artifact": row["name"], "max_bytes": 10**9,
                                    "min_accuracy": 0.1, "max_accuracy_drop": 50}))
    assert all(not r.passed and "not measured" in r.detail for r in res.values())


def test_parity_lists_failed_exports(report):
    [res] = evaluate(report, {"require_parity": True})
    assert not res.passed and "pruned.onnx" in res.detail and "3.0e-03" in res.detail
    assert "pruned.int8.tflite (not validated)" in res.detail
    fixed = copy.deepcopy(report)
    for r in fixed["artifacts"]:
        if r["format"] != "keras":
            r["validation"] = _ok()
    [res] = evaluate(fixed, {"require_parity": True})
    assert res.passed and res.measured == res.threshold == 5


def test_no_thresholds_and_bad_values_are_config_errors(report):
    with pytest.raises(ConfigError, match="no gate thresholds"):
        evaluate(report, {"artifact": "best", "latency_threads": 1})
    with pytest.raises(ConfigError, match="min_accuracy is a fraction"):
        evaluate(report, {"min_accuracy": 88})
    with pytest.raises(ConfigError, match="max_bytes must be an integer"):
        evaluate(report, {"max_bytes": "big"})
    with pytest.raises(ConfigError, match=">= 0"):
        evaluate(report, {"max_p90_ms": -1.0})


# -- output formats --------------------------------------------------------------------------
def _results():
    return [CheckResult("max_gzip_bytes", "a.tflite", 100, 200, True, "gzip size 100 <= 200"),
            CheckResult("max_p90_ms", "a.tflite", None, 1.0, False, "no p90 <latency> & co")]


def test_junit_xml_is_valid_and_names_the_failed_check():
    root = ET.fromstring(junit_xml(_results()))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"max_gzip_bytes", "max_p90_ms"}
    assert cases["max_gzip_bytes"].find("failure") is None
    failure = cases["max_p90_ms"].find("failure")
    assert "max_p90_ms" in failure.get("message") and "<latency> & co" in failure.get("message")


def test_text_and_markdown_tables():
    text = text_table(_results())
    assert "FAIL" in text and "PASS" in text and "gate FAILED: 1 of 2" in text
    md = markdown_summary(_results(), note="Gated artifact: a.tflite.")
    assert md.startswith("### slimpipe gate: ❌ FAILED") and "`max_p90_ms`" in md
    assert "Gated artifact: a.tflite." in md and md.count("\n|") == 4


# -- command line ----------------------------------------------------------------------------
def parse(*argv):
    parser = argparse.ArgumentParser(prog="slimpipe")
    add_gate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["gate", *argv])


@pytest.fixture
def report_path(tmp_path, report):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def test_exit_codes(report_path, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert run_gate(parse("--report", str(report_path), "--max-gzip-bytes", "200000",
                          "--max-accuracy-drop", "0.5")) == 0
    out = capsys.readouterr().out
    assert "best: pruned.sparse.tflite" in out and "gate PASSED" in out
    assert run_gate(parse("--report", str(report_path), "--require-parity")) == 1
    assert "gate FAILED" in capsys.readouterr().out
    for argv in (["--report", str(tmp_path / "missing.json"), "--max-bytes", "1"],
                 ["--report", str(report_path)],
                 ["--report", str(report_path), "--artifact", "nope", "--max-bytes", "1"]):
        with pytest.raises(ConfigError):
            run_gate(parse(*argv))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        run_gate(parse("--report", str(tmp_path / "bad.json"), "--max-bytes", "1"))
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error, exit 2
        parse("--report", str(report_path), "--max-bytes", "lots")
    assert exc.value.code == 2


def test_recipe_gate_table_and_command_line_override(report_path, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[stages]]\nstage = "train"\n[gate]\nmax_gzip_bytes = 100000\n'
                      'max_accuracy_drop = 0.5\nrequire_parity = false\n')
    junit = tmp_path / "out" / "gate.xml"
    # recipe alone: best within 0.5 points is pruned.sparse.tflite at 150,000 > 100,000 -> fail
    assert run_gate(parse("--report", str(report_path), "--recipe", str(recipe),
                          "--junit", str(junit))) == 1
    failure = ET.parse(junit).getroot().find("testsuite/testcase[@name='max_gzip_bytes']/failure")
    assert failure is not None and "max_gzip_bytes" in failure.get("message")
    assert not list(junit.parent.glob("*.tmp"))
    # the command line wins over the recipe
    assert run_gate(parse("--report", str(report_path), "--recipe", str(recipe),
                          "--max-gzip-bytes", "150000", "--junit", str(junit))) == 0
    assert ET.parse(junit).getroot().find(".//failure") is None
    assert run_gate(parse("--report", str(report_path), "--recipe", str(recipe),
                          "--max-gzip-bytes", "150000", "--require-parity")) == 1


def test_unknown_gate_key_in_recipe(report_path, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[gate]\nmax_gzip_byte = 1\n')
    with pytest.raises(ConfigError, match=r"unknown gate keys \['max_gzip_byte'\]"):
        run_gate(parse("--report", str(report_path), "--recipe", str(recipe)))
    recipe.write_text('[gate]\nmax_p90_ms = "fast"\n')
    with pytest.raises(ConfigError, match="max_p90_ms must be a number"):
        run_gate(parse("--report", str(report_path), "--recipe", str(recipe)))


def test_a_bad_gate_table_fails_when_the_recipe_loads(tmp_path):
    # before any training: 'slimpipe compress' loads the recipe first
    from slimpipe.pipeline.recipe import load_recipe
    from slimpipe.stages import STAGES

    recipe = tmp_path / "r.toml"
    recipe.write_text('[[stages]]\nstage = "train"\n[gate]\nmin_accuracy = 92\n')
    with pytest.raises(ConfigError, match="min_accuracy is a fraction between 0 and 1.*0.92"):
        load_recipe(recipe, STAGES)
    recipe.write_text('[[stages]]\nstage = "train"\n[gate]\nmax_gzip_bytes = 1000\n')
    assert load_recipe(recipe, STAGES).gate == {"max_gzip_bytes": 1000}


def test_shipped_recipe_gate_table_is_used(report_path):
    from slimpipe.pipeline.gate import recipe_gate
    gate = recipe_gate("default")
    assert gate["require_parity"] is True and gate["max_accuracy_drop"] == 1.0
    # the command line wins over the recipe
    assert run_gate(parse("--report", str(report_path), "--recipe", "default",
                          "--max-accuracy-drop", "100", "--no-require-parity",
                          "--max-bytes", "10000000")) == 0


def test_summary_file_and_github_step_summary(report_path, tmp_path, monkeypatch):
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    summary = tmp_path / "summary.md"
    assert run_gate(parse("--report", str(report_path), "--max-bytes", "1",
                          "--summary", str(summary))) == 1
    text = summary.read_text()
    assert "FAILED" in text and "`max_bytes`" in text and "pruned.int8.tflite" in text
    appended = step.read_text()
    assert appended.startswith("earlier step\n") and text in appended
