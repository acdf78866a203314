"""`slimpipe compress` on an image folder (real Fashion-MNIST images written as PNG files), with a
built-in model and with a model file that carries its own Rescaling layer."""
import json
from pathlib import Path

import numpy as np
import pytest

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.data import FASHION_MNIST_LABELS, IDX_FILES, read_idx

Image = pytest.importorskip("PIL.Image")
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not (FASHION / IDX_FILES[0]).is_file(),
                                reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
# Folder names that sort in Fashion-MNIST's class order, so a model trained on its labels fits.
NAMES = [f"{i}_{name.replace('/', '-')}" for i, name in enumerate(FASHION_MNIST_LABELS)]

TINY = """
name = "tiny"
{train}
[[stages]]
stage = "export"
formats = ["tflite"]
[[stages]]
stage = "benchmark"
latency = [[1, 1]]
warmup = 1
min_runs = 3
min_seconds = 0.0
passes = 1
sparse_kernels = false
[[stages]]
stage = "bundle"
zip = false
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")
    monkeypatch.setenv("SLIMPIPE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def folder(tmp_path):
    """300 real test images, 30 per class, as PNG files in class folders."""
    x, y = read_idx(FASHION / IDX_FILES[2]), read_idx(FASHION / IDX_FILES[3])
    root = tmp_path / "clothes"
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(x[y == c][:30]):
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


def _recipe(tmp_path, train: bool) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(train='[[stages]]\nstage = "train"\nepochs = 1' if train else ""))
    return path


@pytest.mark.slow
def test_compress_a_folder_with_a_built_in_model(tmp_path, folder):
    out = tmp_path / "run"
    assert main(["compress", "--model", "cnn", "--dataset", f"dir:{folder}", "--image-size", "28x28",
                 "--recipe", str(_recipe(tmp_path, train=True)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    data = report["data"]
    assert data["labels"] == NAMES and data["classes"] == 10 and data["input_shape"] == [28, 28, 1]
    assert (data["train_examples"], data["test_examples"]) == (240, 60) and data["input_range"] == "0-1"
    rows = {r["name"]: r for r in report["artifacts"]}
    assert rows["trained.tflite"]["accuracy"] == pytest.approx(rows["trained"]["accuracy"], abs=1 / 60)
    bundle = next(out.glob("*-bundle")) / "trained.tflite"
    assert (bundle / "labels.txt").read_text().split("\n")[:10] == NAMES


@pytest.fixture
def rescaling_model(tmp_path):
    """A classifier with Rescaling(1/255) at its input, trained on raw Fashion-MNIST pixels (0-255)."""
    import tf_keras as keras

    x, y = read_idx(FASHION / IDX_FILES[0])[:3000], read_idx(FASHION / IDX_FILES[1])[:3000]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[..., None].astype(np.float32), y, epochs=3, batch_size=64, verbose=0)
    path = tmp_path / "rescaling.h5"
    model.save(path)
    return path


@pytest.mark.slow
def test_model_with_rescaling_gets_0_255_and_the_wrong_range_fails(tmp_path, folder, rescaling_model, capsys):
    out = tmp_path / "run"
    recipe = str(_recipe(tmp_path, train=False))
    code = main(["compress", "--model", str(rescaling_model), "--dataset", f"dir:{folder}",
                 "--input-range", "0-1", "--recipe", recipe, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pass --input-range 0-255" in err, err
    assert not out.exists()
    assert main(["compress", "--model", str(rescaling_model), "--dataset", f"dir:{folder}",
                 "--recipe", recipe, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    data = report["data"]
    assert data["input_range"] == "0-255" and data["input_range_source"].startswith("detected: ")
    assert data["normalization"] == {"scale": 1.0, "offset": 0.0}
    assert data["baseline_check"]["accuracy"] > 0.5
    assert any("range 0-255 (detected" in note for note in report["notes"])
    meta = json.loads((next(out.glob("*-bundle")) / "source.tflite" / "metadata.json").read_text())
    assert meta["input"]["normalization"]["scale"] == 1.0


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert err.startswith("slimpipe: error: ") and "Traceback" not in err


def test_bad_folders_and_options_fail_in_one_line_before_writing(tmp_path, folder, capsys):
    out = tmp_path / "out"
    base = ["compress", "--out", str(out), "--image-size", "28x28", "--dataset"]
    (folder / NAMES[3] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    _fails(capsys, base + [f"dir:{folder}"], f"{NAMES[3]}/broken.png' is not a decodable image")
    (folder / NAMES[3] / "broken.png").unlink()
    (folder / "empty_class").mkdir()
    _fails(capsys, base + [f"dir:{folder}"], "empty_class' has no images")
    _fails(capsys, base + ["fashion_mnist", "--test-split", "0.3"], "--test-split applies to image folders")
    _fails(capsys, base + [f"dir:{folder}", "--test-split", "1.5"], "--test-split must be a fraction")
    import tf_keras as keras

    model = tmp_path / "m.h5"
    keras.Sequential([keras.layers.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(model)
    _fails(capsys, base + [f"dir:{folder}", "--model", str(model)],
           "--image-size 28x28 but the model takes 32x32 images")
    assert not out.exists() and not list((tmp_path / "cache").rglob("*.u8"))
