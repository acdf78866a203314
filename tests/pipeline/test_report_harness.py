"""What the report says about latency measurements: cv and load time, the ISA flags, int8
against float on this CPU (computed from the measurements), and the from-scratch control."""
import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.report import build_report
from slimpipe.pipeline.speed import isa_summary


def _lat(p50, engine="xnnpack"):
    return {"runtime": "litert", "device": "cpu", "threads": 1, "batch": 1, "engine": engine,
            "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3, "cv": 0.042, "runs": 900,
            "load_ms": 3.25}


@pytest.fixture
def run(tmp_path, tiny_data):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, model_name="tiny")

    def add(name, fmt, stage, parent, meta=None, **measured):
        path = tmp_path / name
        path.write_bytes(name.encode())
        art = make_artifact(name, path, fmt=fmt, kind=fmt, stage=stage, config={}, parent=parent, meta=meta)
        ctx.artifacts.append(art)
        ctx.measurements[name] = measured
        return art

    trained = add("trained", "keras", "train", None, accuracy=0.92,
                  complexity={"params": 130_000, "macs": 2_800_000})
    pruned = add("structured", "keras", "structured_prune", trained, accuracy=0.915,
                 complexity={"params": 40_000, "macs": 400_000})
    add("structured.scratch", "keras", "structured_prune", trained, {"from_scratch": True},
        accuracy=0.905, complexity={"params": 40_000, "macs": 400_000})
    add("trained.tflite", "tflite", "export", trained, {"mode": "float32"}, accuracy=0.92,
        latency=[_lat(0.040)])
    add("structured.tflite", "tflite", "export", pruned, {"mode": "float32"}, accuracy=0.915,
        latency=[_lat(0.010)])
    add("structured.int8.tflite", "tflite", "quantize", pruned, {"mode": "int8"}, accuracy=0.914,
        latency=[_lat(0.005)])
    ctx.baseline = "trained"
    ctx.add = add
    return ctx


def test_latency_table_shows_cv_and_load_time(run):
    md = render_markdown(build_report(run, recipe="speed", environment={"isa": ["avx2"]}))
    assert "| p50 ms | p90 ms | p99 ms | cv | runs | load ms |" in md
    assert "| 0.040 | 0.044 | 0.052 | 4.2% | 900 | 3.2 |" in md


@pytest.mark.parametrize("isa, expected", [
    (["avx", "avx2", "fma"], "AVX2 yes, AVX-512 no, VNNI (8-bit dot products) no, FMA yes"),
    (["avx2", "avx512f", "avx512_vnni"], "AVX2 yes, AVX-512 yes, VNNI (8-bit dot products) yes"),
    (["avx2", "avx_vnni"], "AVX-512 no, VNNI (8-bit dot products) yes"),
    (None, "ISA: unknown"),
])
def test_isa_summary_names_avx2_avx512_and_vnni(isa, expected):
    assert expected in isa_summary(isa)


def test_int8_faster_than_float_is_said_plainly(run):
    report = build_report(run, recipe="speed", environment={"isa": ["avx2"]})
    (entry,) = report["int8_vs_float"]
    assert (entry["artifact"], entry["float_artifact"]) == ("structured.int8.tflite", "structured.tflite")
    assert entry["speedup"] == pytest.approx(2.0)
    assert "paid off" in entry["sentence"] and "tfmot#599" not in entry["sentence"]
    assert entry["sentence"] in render_markdown(report)


@pytest.mark.parametrize("isa, engine, says, not_says", [
    (["avx2"], "xnnpack", ["no VNNI", "tfmot#599", "quantizes its float input"], ["builtin"]),
    (["avx2", "avx512_vnni"], "xnnpack", ["tfmot#599"], ["no VNNI", "builtin"]),
    (["avx2", "avx512_vnni"], "builtin", ["builtin kernels, not XNNPACK"], ["no VNNI"]),
])
def test_int8_slower_than_float_says_why_from_isa_and_engine(run, isa, engine, says, not_says):
    run.measurements["structured.int8.tflite"]["latency"] = [_lat(0.025, engine=engine)]
    report = build_report(run, recipe="speed", environment={"isa": isa})
    (entry,) = report["int8_vs_float"]
    assert entry["speedup"] == pytest.approx(0.4)
    assert "slower than float" in entry["sentence"]
    for text in says:
        assert text in entry["sentence"]
    for text in not_says:
        assert text not in entry["sentence"]
    env = render_markdown(report).split("## Environment")[1]
    assert entry["sentence"] in env and "VNNI" in env


def test_complexity_fields_and_the_from_scratch_control(run):
    pruned = next(a for a in run.artifacts if a.name == "structured")
    run.add("structured.int8.s2d.tflite", "tflite", "quantize", pruned,
            {"mode": "int8", "complexity": {"params": 40_500, "macs": 430_000}}, accuracy=0.914)
    report = build_report(run, recipe="speed", environment={"isa": []})
    rows = {r["name"]: r for r in report["artifacts"]}
    assert (rows["structured.int8.tflite"]["params"], rows["structured.int8.tflite"]["macs"]) == (40_000, 400_000)
    assert rows["trained.tflite"]["macs"] == 2_800_000
    # A file converted from a rewrite of its parent (space_to_depth_stem) has its own count.
    assert (rows["structured.int8.s2d.tflite"]["params"], rows["structured.int8.s2d.tflite"]["macs"]) == (40_500, 430_000)
    assert rows["structured.scratch"]["from_scratch"] and not rows["structured"]["from_scratch"]
    md = render_markdown(report)
    assert "| `structured.tflite` | tflite | 40,000 | 0.400 | 7.00x | 91.50% |" in md
    assert ("Pruned and fine-tuned `structured`: 91.50%; the same architecture trained from "
            "scratch, `structured.scratch`") in md
    assert "(+1.00 points for pruning and fine-tuning)" in md
