"""One atomic writer for every file slimpipe writes: complete or absent, never half-written."""
import pytest

from slimpipe.pipeline.atomic import atomic_output, write_bytes_atomic, write_text_atomic


def test_text_is_written_as_utf8_and_replaces_the_old_file(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_text_atomic(target, "old")
    assert write_text_atomic(target, "Δ acc – ✅\n") == target
    assert target.read_bytes() == "Δ acc – ✅\n".encode("utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_a_tool_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    write_bytes_atomic(target, b"old complete file")
    with pytest.raises(RuntimeError, match="converter crashed"):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.")
            tmp.write_bytes(b"half")
            raise RuntimeError("converter crashed")
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_tool_writing_the_temporary_path_itself(tmp_path):
    with atomic_output(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "model.onnx").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_written_file_gets_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = write_bytes_atomic(tmp_path / "f.bin", b"x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
