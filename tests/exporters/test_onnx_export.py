"""export_onnx: checker, named dynamic-batch input, parity, atomic writes."""
import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.validate import check_parity, raise_on_mismatch
from slimpipe.pipeline.errors import ConfigError, ExportValidationError, StageError


def test_onnx_export_checks_and_matches_keras(tiny_model, tiny_data, tmp_path):
    import onnx

    path = export_onnx(tiny_model, tmp_path / "tiny.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # free batch dimension
    assert [d.dim_value for d in dims[1:]] == [12, 12, 1]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17

    x = tiny_data.x_test
    ref = tiny_model(x, training=False).numpy()
    res = check_parity(ref, path, "onnx", x)
    assert res["passed"] and res["max_abs_diff"] <= 1e-4 and res["atol"] == 1e-4

    bad = check_parity(ref * 1.5 + 0.01, path, "onnx", x)
    assert not bad["passed"] and bad["mismatched_samples"] == len(x)
    with pytest.raises(ExportValidationError, match=r"tiny\.onnx: max \|diff\| .* on 128 of 128 samples"):
        raise_on_mismatch({"tiny.onnx": bad})


def test_exporting_twice_in_one_process_gives_the_same_bytes(tiny_model, tiny_data, tmp_path):
    # tf2onnx numbers the names it makes from a process-wide counter; export_onnx renumbers them
    import onnx

    first = export_onnx(tiny_model, tmp_path / "a.onnx").read_bytes()
    second = export_onnx(tiny_model, tmp_path / "b.onnx").read_bytes()
    assert first == second
    names = [n.name for n in onnx.load_from_string(first).graph.node]
    assert len(set(names)) == len(names) and any(n.endswith("__1") for n in names)
    x = tiny_data.x_test[:32]
    assert check_parity(tiny_model(x, training=False).numpy(), tmp_path / "b.onnx", "onnx", x)["passed"]


def test_onnx_conversion_failure_is_one_line_and_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    import tf2onnx

    def boom(*args, **kwargs):
        raise ValueError("unsupported op Foo\ntraceback noise")

    monkeypatch.setattr(tf2onnx.convert, "from_keras", boom)
    target = tmp_path / "tiny.onnx"
    with pytest.raises(StageError) as err:
        export_onnx(tiny_model, target)
    assert "unsupported op Foo" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_onnx_checker_failure_is_export_validation_error(tiny_model, tmp_path, monkeypatch):
    import onnx

    def reject(model, *a, **k):
        raise onnx.checker.ValidationError("bad graph")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(ExportValidationError, match="bad graph"):
        export_onnx(tiny_model, tmp_path / "tiny.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [9, 99, "17", True])
def test_bad_opset(tiny_model, tmp_path, opset):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(tiny_model, tmp_path / "x.onnx", opset=opset)


def test_check_parity_rejects_mismatched_reference(tmp_path, tiny_model, tiny_data):
    path = export_onnx(tiny_model, tmp_path / "tiny.onnx")
    with pytest.raises(ConfigError, match="reference"):
        check_parity(np.zeros((3, 4), np.float32), path, "onnx", tiny_data.x_test[:5])
    with pytest.raises(ConfigError, match="fmt"):
        check_parity(np.zeros((5, 4), np.float32), path, "keras", tiny_data.x_test[:5])
