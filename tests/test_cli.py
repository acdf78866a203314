"""The command line, end to end on real Fashion-MNIST, and every kind of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimpipe.pipeline.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.exists() and not os.environ.get("SLIMPIPE_DATA_DIR"),
                                   reason="Fashion-MNIST not installed (make test installs it)")



def fashion_slice(path: Path, train: int, test: int = 128) -> Path:
    """An .npz of `train` training and `test` test images of the real Fashion-MNIST, as uint8."""
    from slimpipe.pipeline.data import load_dataset

    ds = load_dataset("fashion_mnist", limit=train)
    to_uint8 = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_uint8(ds.x_train), y_train=ds.y_train, x_test=to_uint8(ds.x_test[:test]),
             y_test=ds.y_test[:test], labels=np.array(ds.labels))
    return path


QUICK = """
name = "quick"
[[stages]]
stage = "train"
epochs = 2
[[stages]]
stage = "prune"
final_sparsity = 0.8
epochs = 1
[[stages]]
stage = "strip"
[[stages]]
stage = "export"
[[stages]]
stage = "benchmark"
min_runs = 5
min_seconds = 0.05
warmup = 2
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


@pytest.mark.slow
@needs_fashion
def test_compress_end_to_end_on_real_data(tmp_path):
    recipe = tmp_path / "quick.toml"
    recipe.write_text(QUICK)
    out = tmp_path / "run"
    code = main(["compress", "--model", "cnn", "--dataset", "fashion_mnist", "--limit", "6000",
                 "--recipe", str(recipe), "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# slimpipe report: cnn on fashion_mnist")
    rows = {r["name"]: r for r in report["artifacts"]}
    assert report["baseline"] == "trained"
    assert set(rows) >= {"trained", "pruned", "trained.tflite", "trained.onnx", "pruned.tflite",
                         "pruned.sparse.tflite", "pruned.onnx"}
    assert rows["trained"]["accuracy"] > 0.75  # learned real clothes from 6000 images (chance: 0.1)
    assert rows["trained"]["accuracy"] - rows["pruned"]["accuracy"] < 0.05
    assert abs(rows["pruned"]["sparsity"] - 0.8) < 0.03  # measured from the file
    assert rows["trained"]["gzip_bytes"] / rows["pruned"]["gzip_bytes"] > 2.5
    for name in ("trained.tflite", "trained.onnx", "pruned.tflite", "pruned.onnx"):
        assert rows[name]["validation"]["passed"], name
        assert rows[name]["validation"]["max_abs_diff"] <= 1e-4
        assert abs(rows[name]["accuracy"] - rows[name.rsplit(".", 1)[0]]["accuracy"]) < 0.002
        points = {(l["threads"], l["batch"]) for l in rows[name]["latency"]}
        assert points == {(1, 1), (1, 32), (os.cpu_count(), 1), (os.cpu_count(), 32)}
        assert all(0 < l["p50_ms"] <= l["p90_ms"] <= l["p99_ms"] for l in rows[name]["latency"])
        assert (out / rows[name]["path"]).is_file()
    assert rows["pruned.sparse.tflite"]["bytes"] < rows["pruned.tflite"]["bytes"] / 2
    assert {s["name"] for s in report["stages"]} == {"train", "prune", "strip", "export", "benchmark"}
    assert any(s["artifact"] == "pruned.tflite" for s in report["sparsity_and_speed"])
    assert not list(out.glob(".*.tmp"))


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimpipe: error: ") and "Traceback" not in err
    assert match in err, err
    return err


@pytest.fixture
def user_model(tmp_path):
    import tf_keras as keras
    model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    path = tmp_path / "user.h5"
    model.save(path)
    return path


def _npz(path, classes=3, shape=(28, 28)):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (30, *shape), dtype=np.uint8),
             y_train=rng.integers(0, classes, 30), x_test=rng.integers(0, 255, (10, *shape), dtype=np.uint8),
             y_test=rng.integers(0, classes, 10))
    return path


def test_bad_inputs_fail_in_one_line_before_writing(tmp_path, capsys, user_model, monkeypatch):
    out = tmp_path / "out"
    bad_recipe = tmp_path / "bad.toml"
    bad_recipe.write_text('[[stages]]\nstage = "prune"\nfinal_sparsity = 1.5\n')
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    wrong = _npz(tmp_path / "three.npz", classes=3)
    base = ["compress", "--out", str(out), "--dataset"]
    _fails(capsys, base + ["fashion_mnist", "--model", "resnet9000"], "resnet9000")
    _fails(capsys, base + ["imagenet22k"], "imagenet22k")
    _fails(capsys, base + ["fashion_mnist", "--recipe", str(bad_recipe)], "final_sparsity")
    _fails(capsys, base + ["fashion_mnist", "--epochs", "-1"], "--epochs")
    _fails(capsys, base + ["fashion_mnist", "--recipe", "nope"], "unknown recipe")
    _fails(capsys, base + [f"npz:{wrong}", "--model", str(text)], "notes.h5")
    _fails(capsys, base + [f"npz:{wrong}", "--model", str(user_model)], "classes")
    _fails(capsys, base + [f"npz:{tmp_path / 'missing.npz'}"], "missing.npz")
    assert not out.exists()


def test_missing_download_offline_says_where_to_put_files(tmp_path, capsys, monkeypatch):
    import tf_keras
    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(tf_keras.datasets.cifar10, "load_data", offline)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SLIMPIPE_DATA_DIR", str(tmp_path / "empty"))
    err = _fails(capsys, ["compress", "--dataset", "cifar10", "--out", str(tmp_path / "o")], "cifar")
    assert "cifar-10-python.tar.gz" in err


def test_console_script_lists_and_exits_2(tmp_path):
    exe = Path(sys.executable).with_name("slimpipe")
    listing = subprocess.run([exe, "list"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    for word in ("cnn", "vgg16", "fashion_mnist", "cifar10", "prune", "strip", "default"):
        assert word in listing.stdout
    # every stage's parameters with their defaults
    assert "final_sparsity=" in listing.stdout and "per_channel=True" in listing.stdout
    bad = subprocess.run([exe, "compress", "--model", "nope", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("slimpipe: error: ") and "nope" in last
    assert "Traceback" not in bad.stderr
