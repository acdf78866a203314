"""`slimpipe results`: stamped Markdown tables, from report.json files alone."""
import json
import os
import re

import numpy as np
import pytest

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.results import Run, load_run, render_results, select

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _lat(p50, passes=None, runtime="litert", engine="xnnpack"):
    row = {"runtime": runtime, "engine": engine, "device": "cpu", "threads": 1, "batch": 1,
           "resolver": "default", "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5,
           "runs": 100}
    if passes:
        row["pass_p50_ms"] = passes
    return row


def _row(name, fmt, parent, *, bytes_, gzip, acc, latency=(), mode=None, sparse=False,
         sparsity=0.0, passed=True):
    return {"name": name, "format": fmt, "kind": fmt, "stage": "export", "parent": parent,
            "path": f"05-export/{name}", "bytes": bytes_, "gzip_bytes": gzip, "sparsity": sparsity,
            "accuracy": acc, "latency": list(latency), "mode": mode, "sparse_storage": sparse,
            "validation": None if fmt == "keras" else {"passed": passed, "max_abs_diff": 1e-6}}


def make_report():
    """A default-like run: baseline, a small PCQAT file, a fast structured file, and two files
    that must not be picked (a smaller one that failed parity, a faster one 3 points down)."""
    dense_passes = [0.080, 0.082, 0.090, 0.081]
    arts = [
        _row("trained", "keras", None, bytes_=1_600_000, gzip=1_480_000, acc=0.9228),
        _row("trained.tflite", "tflite", "trained", bytes_=527_116, gzip=488_270, acc=0.9228,
             mode="float32", latency=[_lat(0.0819, dense_passes)]),
        _row("clustered.pcqat.sparse.tflite", "tflite", "clustered", bytes_=24_224, gzip=19_235,
             acc=0.9181, mode="int8", sparse=True, sparsity=0.933,
             latency=[_lat(0.115, [0.11, 0.12, 0.118, 0.115], engine="builtin")]),
        _row("clustered.onnx", "onnx", "clustered", bytes_=526_077, gzip=9_000, acc=0.9190,
             passed=False, latency=[_lat(0.07, runtime="onnxruntime", engine="CPU")]),
        _row("structured.dynamic.tflite", "tflite", "structured", bytes_=95_824, gzip=84_982,
             acc=0.9203, mode="dynamic", latency=[_lat(0.0170, [0.016, 0.017, 0.020, 0.017])]),
        _row("tiny.tflite", "tflite", "tiny", bytes_=20_000, gzip=18_000, acc=0.8900,
             mode="int8", latency=[_lat(0.0050)]),
    ]
    return {
        "slimpipe_version": "0.1.2", "model": "cnn", "dataset": "fashion_mnist",
        "recipe": "default", "baseline": "trained",
        "environment": {"cpu": "Intel(R) Xeon(R) Platinum 8481C", "cores": 2,
                        "isa": ["avx", "avx2", "avx512f", "avx512_vnni"], "gpu": [],
                        "python": "3.11.7",
                        "versions": {"tensorflow": "2.21.0", "ai_edge_litert": "2.3.0"}},
        "run": {"finished_utc": "2026-05-09T07:35:25Z",
                "argv": ["slimpipe", "compress", "--model", "cnn", "--recipe", "default"],
                "command": "slimpipe compress --model cnn --recipe default",
                "make": {"RECIPE": "default"}, "git": {"commit": COMMIT, "dirty": True}},
        "stages": [{"name": "train", "stage": "train", "seconds": 155.2},
                   {"name": "export", "stage": "export", "seconds": 11.0, "reused": True}],
        "artifacts": arts, "notes": []}


def _table(text):
    """{artifact: cells} of the Markdown table rows."""
    rows = [l for l in text.splitlines() if l.startswith("| `")]
    return {r.split(" | ")[0][3:-1]: [c.strip() for c in r.strip("|").split("|")] for r in rows}


def test_select_picks_the_baseline_the_smallest_and_the_fastest_deployable():
    report = make_report()
    picked = {row["name"]: roles for row, roles in select(report)}
    assert picked == {"trained.tflite": ["dense baseline"],
                      "clustered.pcqat.sparse.tflite": ["smallest within 0.5 points"],
                      "structured.dynamic.tflite": ["fastest within 1 point"]}
    wider = {row["name"]: roles for row, roles in select(report, within=5, fast_within=5)}
    assert wider["tiny.tflite"] == ["smallest within 5 points", "fastest within 5 points"]
    every = [row["name"] for row, _ in select(report, every=True)]
    assert "clustered.onnx" not in every and "tiny.tflite" in every and "trained" not in every


def test_rendered_rows_carry_the_reports_figures():
    text = render_results([Run("runs/default", make_report())])
    rows = _table(text)
    assert list(rows) == ["trained.tflite", "clustered.pcqat.sparse.tflite",
                          "structured.dynamic.tflite"]
    small = rows["clustered.pcqat.sparse.tflite"]
    assert small[1:10] == ["smallest within 0.5 points", "int8", "24,224", f"{527_116 / 24_224:.2f}x",
                           "19,235", f"{488_270 / 19_235:.2f}x", "93.3%", "91.81%", "-0.47"]
    assert small[10] == "0.1150 (litert builtin)"
    ratios = [a / b for a, b in zip([0.080, 0.082, 0.090, 0.081], [0.11, 0.12, 0.118, 0.115])]
    assert small[11] == f"{0.0819 / 0.115:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    fast = rows["structured.dynamic.tflite"]
    assert fast[9] == "-0.25" and fast[11].startswith(f"{0.0819 / 0.0170:.2f}x (")
    assert rows["trained.tflite"][4] == "1.00x" and rows["trained.tflite"][11] == "1.00x"


def test_each_table_is_stamped_with_its_run():
    text = render_results([Run("runs/default", make_report())])
    assert "- Finished: 2026-05-09T07:35:25Z; stages took 166 s (1 of 2 stages taken from the cache)" in text
    assert ("- Command: `slimpipe compress --model cnn --recipe default` (under make, with "
            "`RECIPE=default`)") in text
    assert f"- slimpipe 0.1.2, commit `{COMMIT[:12]}`, with uncommitted changes" in text
    assert ("- CPU: Intel(R) Xeon(R) Platinum 8481C, 2 cores; ISA flags: avx, avx2, avx512f, "
            "avx512_vnni; GPU: none") in text
    assert "- Tools: python 3.11.7, tensorflow 2.21.0, ai_edge_litert 2.3.0" in text
    assert "`slimpipe results runs/default`" in text
    assert "## cnn on fashion_mnist, recipe `default`" in text


def test_a_report_without_a_run_record_says_so():
    report = make_report()
    del report["run"]
    text = render_results([Run("old", report)])
    assert "- Command: not recorded" in text and "commit not recorded" in text


def test_named_artifacts_are_added_and_unknown_names_refused():
    runs = [Run("a", make_report())]
    assert "tiny.tflite" in _table(render_results(runs, names=["tiny.tflite"]))
    with pytest.raises(ConfigError, match="--artifact 'nope' is in none of the runs"):
        render_results(runs, names=["nope"])


def test_load_run_reads_a_folder_or_a_file_and_refuses_anything_else(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(make_report()))
    assert load_run(tmp_path).report["model"] == "cnn"
    assert load_run(tmp_path / "report.json").source.endswith("report.json")
    with pytest.raises(ConfigError, match="expected a run folder with a report.json"):
        load_run(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_run(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a slimpipe report"):
        load_run(tmp_path / "other.json")


def test_cli_writes_the_same_markdown_to_stdout_or_a_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(make_report()))
    assert main(["results", str(run)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "docs" / "benchmarks.md"
    assert main(["results", str(run), "--out", str(out)]) == 0
    assert out.read_text() == printed == render_results([Run(str(run), make_report())])
    assert main(["results", str(tmp_path / "none")]) == 2
    assert "slimpipe: error: slimpipe results: expected a run folder" in capsys.readouterr().err


TINY_RECIPE = """
name = "tiny"
[[stages]]
stage = "train"
epochs = 1
[[stages]]
stage = "export"
formats = ["tflite"]
[[stages]]
stage = "benchmark"
latency = [[1, 1]]
passes = 2
min_runs = 4
min_seconds = 0.02
sparse_kernels = false
"""


@pytest.mark.slow
def test_results_of_a_real_run_match_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 255, (64, 20, 20, 1), dtype=np.uint8),
             y_train=rng.integers(0, 3, 64), x_test=rng.integers(0, 255, (32, 20, 20, 1), dtype=np.uint8),
             y_test=rng.integers(0, 3, 32))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    argv = ["compress", "--dataset", f"npz:{data}", "--recipe", str(recipe), "--width", "0.25",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    run = report["run"]
    assert run["argv"] == ["slimpipe", *argv]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["finished_utc"])
    assert run["git"] is None or re.fullmatch(r"[0-9a-f]{40}", run["git"]["commit"])
    text = render_results([load_run(tmp_path / "run")])
    assert f"- Command: `{run['command']}`" in text
    assert f"- Finished: {run['finished_utc']}" in text
    assert f"- CPU: {report['environment']['cpu']}, {os.cpu_count()} cores" in text
    dense = next(r for r in report["artifacts"] if r["name"] == "trained.tflite")
    cells = _table(text)["trained.tflite"]
    assert cells[1].startswith("dense baseline") and cells[3] == f"{dense['bytes']:,}"
    assert cells[8] == f"{dense['accuracy']:.2%}"
    assert cells[10].startswith(f"{dense['latency'][0]['p50_ms']:.4f} (litert")


def test_a_budget_search_says_what_it_chose_and_its_verdict():
    report = make_report()
    assert "Budget search" not in render_results([Run("runs/default", report)])
    report["search"] = {"objective": "size", "max_drop": 0.5, "trials": [{}, {}, {}],
                        "chosen": {"number": 2, "params": {"sparsity": 0.9123, "quant": "pcqat"}},
                        "phases_s": {"baseline": 250.0, "trials": 1100.4, "final": 400.0},
                        "verdict": {"text": "within the budget of 0.5 points: x.tflite, ..."}}
    text = render_results([Run("runs/auto", report)])
    assert ("- Budget search: objective size, at most 0.5 points, 3 trials; chosen trial 2 "
            "(sparsity 0.912, quant pcqat)") in text
    assert "- Seconds per phase: baseline 250, trials 1,100, final 400" in text
    assert "- Verdict: within the budget of 0.5 points: x.tflite, ..." in text
