"""Edge bundles: files, metadata read from the model, reproducible zips, embedded metadata."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_CLASSES, TINY_SHAPE, make_tiny_model
from slimpipe.benchmarks.accuracy import predict_all
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.exporters.bundle import (build_metadata, read_onnx_metadata, read_tflite_metadata,
                              reproducible_zip, write_bundle)
from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.tflite import export_tflite
from slimpipe.pipeline.errors import ConfigError

MEASURED = {"accuracy": 0.75, "accuracy_runtime": "litert", "test_examples": 128, "bytes": 123,
            "gzip_bytes": 99, "sparsity": 0.5, "top1_agreement": 0.98}
LINEAGE = [{"name": "m.tflite", "stage": "export", "id": "0123456789abcdef", "format": "tflite"},
           {"name": "trained", "stage": "train", "id": "fedcba9876543210", "format": "keras"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_data):
    """Float TFLite, int8-I/O TFLite and ONNX files of the tiny model."""
    tmp = tmp_path_factory.mktemp("models")
    model = make_tiny_model()
    return {
        "float": export_tflite(model, tmp / "m.tflite"),
        "int8": export_tflite(model, tmp / "m.int8.tflite", mode="int8",
                              representative=tiny_data.x_train[:64]),
        "onnx": export_onnx(model, tmp / "m.onnx"),
    }


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bundle(path, out, data, **kwargs):
    meta = build_metadata(path, labels=data.labels, normalization=data.normalization,
                          measurement=MEASURED, lineage=LINEAGE)
    return meta, write_bundle(path, out, metadata=meta, labels=data.labels, **kwargs)


def interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def test_tflite_bundle_files_and_metadata(files, tiny_data, tmp_path):
    path = files["float"]
    original = sha(path)
    meta, result = bundle(path, tmp_path, tiny_data)

    folder = tmp_path / "m.tflite"
    assert result["dir"] == str(folder) and result["zip"] == str(tmp_path / "m.tflite.zip")
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt", "m.tflite", "metadata.json"]
    assert {n: sha(folder / n) for n in result["files"]} == result["files"]
    assert (folder / "labels.txt").read_text().splitlines() == list(tiny_data.labels)
    assert sha(path) == original  # the artifact itself is never modified

    on_disk = json.loads((folder / "metadata.json").read_text())
    assert on_disk == {**meta, "bundle": on_disk["bundle"]}
    detail = interpreter(path).get_input_details()[0]
    assert meta["input"]["shape"] == [int(v) for v in detail["shape_signature"]] == [-1, *TINY_SHAPE]
    assert meta["input"]["dtype"] == np.dtype(detail["dtype"]).name == "float32"
    assert "quantization" not in meta["input"]
    assert meta["input"]["normalization"]["formula"] == "x = pixel * scale + offset"
    assert meta["input"]["normalization"]["scale"] == pytest.approx(1 / 255)
    assert meta["output"]["shape"] == [-1, TINY_CLASSES]
    assert meta["output"]["meaning"].startswith(f"logits over {TINY_CLASSES} classes")
    assert meta["labels"]["count"] == len(tiny_data.labels) == TINY_CLASSES
    assert meta["sha256"] == original
    assert on_disk["bundle"]["model_sha256"] == sha(folder / "m.tflite") != original  # embedded
    assert (meta["accuracy"]["top1"], meta["accuracy"]["runtime"]) == (0.75, "litert")
    assert meta["accuracy"]["description"] == "top-1 accuracy measured by litert on 128 test examples"
    assert (meta["bytes"], meta["gzip_bytes"], meta["sparsity"]) == (123, 99, 0.5)
    assert [r["name"] for r in meta["lineage"]] == ["m.tflite", "trained"]
    assert {"tensorflow", "tensorflow_model_optimization", "ai_edge_litert", "onnxruntime",
            "tf_keras", "onnx", "tf2onnx"} <= {k for k, v in meta["versions"].items() if v}
    text = (folder / "metadata.json").read_text()
    # Nothing that changes from one build to the next: no paths, no timestamps.
    assert str(tmp_path) not in text and "/tmp/" not in text
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d|\d\d:\d\d:\d\d", text)
    keys = set()
    walk = [on_disk]
    while walk:
        node = walk.pop()
        if isinstance(node, dict):
            keys |= set(node)
            walk += node.values()
        elif isinstance(node, list):
            walk += node
    assert not [k for k in keys if re.search(r"(?<!run)time|date|created|host|user", k)]
    assert text == json.dumps(on_disk, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_int8_io_records_quantization(files, tiny_data, tmp_path):
    meta, _ = bundle(files["int8"], tmp_path, tiny_data)
    interp = interpreter(files["int8"])
    for rec, detail in ((meta["input"], interp.get_input_details()[0]),
                        (meta["output"], interp.get_output_details()[0])):
        assert rec["dtype"] == "int8"
        scale, zero_point = detail["quantization"]
        assert rec["quantization"]["scale"] == pytest.approx(scale, rel=1e-7)
        assert rec["quantization"]["zero_point"] == zero_point


def test_onnx_bundle_metadata_and_embedded_props(files, tiny_data, tmp_path):
    import onnxruntime as ort

    path = files["onnx"]
    original = sha(path)
    meta, result = bundle(path, tmp_path, tiny_data)
    folder = Path(result["dir"])
    session = ort.InferenceSession(str(folder / "m.onnx"), providers=["CPUExecutionProvider"])
    [inp], [out] = session.get_inputs(), session.get_outputs()
    assert meta["format"] == "onnx" and meta["input"]["name"] == inp.name == "input"
    assert meta["input"]["shape"] == [-1, *TINY_SHAPE] and meta["input"]["dtype"] == "float32"
    assert len(inp.shape) == 4 and list(inp.shape[1:]) == list(TINY_SHAPE)
    assert meta["output"]["shape"] == [-1, TINY_CLASSES] and out.shape[-1] == TINY_CLASSES
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["slimpipe_metadata"]) == meta
    assert json.loads(props["labels"]) == list(tiny_data.labels)
    assert read_onnx_metadata((folder / "m.onnx").read_bytes())["labels"] == list(tiny_data.labels)
    x = tiny_data.x_test[:32]
    np.testing.assert_array_equal(predict_all(open_runtime(path, "onnx"), x),
                                  predict_all(open_runtime(folder / "m.onnx", "onnx"), x))
    assert sha(path) == original == meta["sha256"]


@pytest.mark.parametrize("kind", ["float", "int8", "onnx"])
def test_same_inputs_give_byte_identical_bundles(files, tiny_data, tmp_path, kind):
    _, first = bundle(files[kind], tmp_path / "a", tiny_data)
    _, second = bundle(files[kind], tmp_path / "b", tiny_data)
    assert Path(first["zip"]).read_bytes() == Path(second["zip"]).read_bytes()
    assert first["files"] == second["files"]  # model copy, labels.txt and metadata.json
    with zipfile.ZipFile(first["zip"]) as zf:
        name = Path(first["dir"]).name
        infos = zf.infolist()
        assert [i.filename for i in infos] == [f"{name}/{n}" for n in
                                               (files[kind].name, "labels.txt", "metadata.json",
                                                "MANIFEST.json")]
        assert {(i.date_time, i.external_attr >> 16, i.compress_type) for i in infos} == {
            ((1980, 1, 1, 0, 0, 0), 0o100644, zipfile.ZIP_DEFLATED)}
        manifest = json.loads(zf.read(f"{name}/MANIFEST.json"))
        assert {f["name"]: f["sha256"] for f in manifest["files"]} == first["files"]
        for f in manifest["files"]:
            data = zf.read(f"{name}/{f['name']}")
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"])


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_embedded_tflite_metadata_reads_back_and_predicts_identically(files, tiny_data, tmp_path, kind):
    from ai_edge_litert import schema_py_generated as fb

    path = files[kind]
    original = sha(path)
    meta, result = bundle(path, tmp_path, tiny_data)
    copy = Path(result["dir"]) / path.name
    found = read_tflite_metadata(copy.read_bytes())

    assert {"TFLITE_METADATA", "slimpipe_metadata"} <= set(found["entries"])
    assert found["slimpipe_metadata"] == meta
    assert found["associated_files"] == {"labels.txt": "".join(f"{x}\n" for x in tiny_data.labels).encode()}
    mm = found["model_metadata"]
    assert (mm["name"], mm["author"], mm["version"], mm["min_parser_version"]) == (
        path.name, "slimpipe", LINEAGE[0]["id"], "1.0.0")
    [inp], [out] = mm["inputs"], mm["outputs"]
    assert (inp["content"], inp["color_space"], inp["default_size"]) == (
        "ImageProperties", "GRAYSCALE", {"width": TINY_SHAPE[1], "height": TINY_SHAPE[0]})
    assert inp["normalization"] == {"mean": [0.0], "std": [pytest.approx(255.0)]}  # (p - 0) / 255
    assert out["name"] == "logits" and out["associated_files"] == [
        {"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
         "description": f"{TINY_CLASSES} class names, one per line; line i names class index i"}]
    assert read_tflite_metadata(path.read_bytes())["model_metadata"] is None

    # Same model: same tensors and identical outputs, on XNNPACK and on the builtin kernels.
    a, b = interpreter(path), interpreter(copy)
    for get in ("get_input_details", "get_output_details"):
        strip = [{k: v for k, v in d.items() if k not in ("quantization_parameters", "sparsity_parameters")}
                 for d in getattr(a, get)()]
        other = [{k: v for k, v in d.items() if k not in ("quantization_parameters", "sparsity_parameters")}
                 for d in getattr(b, get)()]
        assert repr(strip) == repr(other)
    x = tiny_data.x_test[:64]
    for resolver in ("default", "builtin"):
        np.testing.assert_array_equal(
            predict_all(open_runtime(path, "tflite", resolver=resolver), x),
            predict_all(open_runtime(copy, "tflite", resolver=resolver), x))
    # Weight buffers are 16-byte aligned, as the schema asks (force_align: 16).
    root = fb.Model.GetRootAs(copy.read_bytes(), 0)
    starts = [root.Buffers(i)._tab.Vector(root.Buffers(i)._tab.Offset(4))
              for i in range(root.BuffersLength()) if root.Buffers(i).DataLength()]
    assert starts and all(s % 16 == 0 for s in starts)
    assert sha(path) == original


def test_without_embedding_the_copy_is_the_original(files, tiny_data, tmp_path):
    for kind in ("float", "onnx"):
        _, result = bundle(files[kind], tmp_path, tiny_data, zip=False, embed_metadata=False)
        assert result["zip"] is None and not list(tmp_path.glob("*.zip"))
        assert result["files"][files[kind].name] == sha(files[kind])
        assert result["embedded"] == {"enabled": False}


def test_rewriting_replaces_the_old_bundle(files, tiny_data, tmp_path):
    _, result = bundle(files["float"], tmp_path, tiny_data)
    (Path(result["dir"]) / "stale.txt").write_text("old")
    _, again = bundle(files["float"], tmp_path, tiny_data)
    assert again == result and not (Path(result["dir"]) / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.zip"]  # no temp dirs


def test_reproducible_zip_depends_only_on_entries():
    entries = [("b.txt", b"2" * 1000), ("a.txt", b"1")]
    assert reproducible_zip(entries) == reproducible_zip(list(entries))
    assert reproducible_zip(entries) != reproducible_zip(entries[::-1])


def test_bad_inputs_are_config_errors(files, tiny_data, tmp_path):
    path = files["float"]
    with pytest.raises(ConfigError, match="outputs 4 classes but 3 labels"):
        build_metadata(path, labels=["a", "b", "c"], normalization=tiny_data.normalization)
    with pytest.raises(ConfigError, match="one-line"):
        build_metadata(path, labels=["a", "b\nc", "d", "e"], normalization=tiny_data.normalization)
    with pytest.raises(ConfigError, match="normalization"):
        build_metadata(path, labels=tiny_data.labels, normalization={"scale": 0, "offset": 0})
    with pytest.raises(ConfigError, match=r"\.tflite, \.onnx or \.keras files"):
        build_metadata(tmp_path / "m.h5", labels=tiny_data.labels, normalization=tiny_data.normalization)
    meta = build_metadata(path, labels=tiny_data.labels, normalization=tiny_data.normalization)
    assert meta["accuracy"] is None and meta["bytes"] == path.stat().st_size
    with pytest.raises(ConfigError, match="folder name"):
        write_bundle(path, tmp_path, metadata={**meta, "name": "../x"}, labels=tiny_data.labels)
    with pytest.raises(ConfigError, match="format 'onnx'"):
        write_bundle(path, tmp_path, metadata={**meta, "format": "onnx"}, labels=tiny_data.labels)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.environ.get("SLIMPIPE_TFLITE_SUPPORT_PYTHON"),
                    reason="set SLIMPIPE_TFLITE_SUPPORT_PYTHON to a Python with tflite-support "
                           "(it needs protobuf < 4, so it cannot share the project's venv)")
def test_tflite_support_reads_the_embedded_metadata(files, tiny_data, tmp_path):
    """Cross-check with the reference reader, run in a separate interpreter."""
    _, result = bundle(files["float"], tmp_path, tiny_data)
    script = (
        "import sys, json\n"
        "from tflite_support import metadata\n"
        "from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version as v\n"
        "buf = open(sys.argv[1], 'rb').read()\n"
        "d = metadata.MetadataDisplayer.with_model_buffer(buf)\n"
        "print(json.dumps({'meta': json.loads(d.get_metadata_json()),\n"
        "  'files': d.get_packed_associated_file_list(),\n"
        "  'labels': d.get_associated_file_buffer('labels.txt').decode(),\n"
        "  'min': v.GetMinimumMetadataParserVersion(bytes(metadata.get_metadata_buffer(buf)))}))\n")
    python = shutil.which(os.environ["SLIMPIPE_TFLITE_SUPPORT_PYTHON"]) or os.environ[
        "SLIMPIPE_TFLITE_SUPPORT_PYTHON"]
    out = subprocess.run([python, "-c", script, str(Path(result["dir"]) / "m.tflite")],
                         capture_output=True, text=True, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["files"] == ["labels.txt"] and got["labels"].splitlines() == list(tiny_data.labels)
    assert got["min"] == got["meta"]["min_parser_version"] == "1.0.0"
    [sub] = got["meta"]["subgraph_metadata"]
    [inp] = sub["input_tensor_metadata"]
    assert inp["content"]["content_properties"]["color_space"] == "GRAYSCALE"
    assert inp["process_units"][0]["options"] == {"mean": [0.0], "std": [255.0]}
    assert sub["output_tensor_metadata"][0]["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
