"""dir:PATH: folders of real Fashion-MNIST images, written by the test as PNG, JPEG, BMP and GIF."""
import os
from pathlib import Path

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
from slimpipe.pipeline.data import FASHION_MNIST_LABELS, IDX_FILES, ImageArray, load_dataset, read_idx
from slimpipe.pipeline.data.image_store import decode_image
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.runner import data_fingerprint

Image = pytest.importorskip("PIL.Image")
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not (FASHION / IDX_FILES[2]).is_file(),
                                reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SLIMPIPE_CACHE_DIR", str(folder))
    return folder


def fashion(classes, per_class):
    """{class name: uint8 (n, 28, 28) images} from the real test split, per_class[i] of class i."""
    x, y = read_idx(FASHION / IDX_FILES[2]), read_idx(FASHION / IDX_FILES[3])
    return {FASHION_MNIST_LABELS[c].replace("/", "-"): x[y == c][:n] for c, n in zip(classes, per_class)}


def write(folder: Path, images: dict, fmt="png", color=False):
    """folder/<class>/<i>.<fmt>; gray images, or colored (a different tint per channel)."""
    for name, arr in images.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(arr):
            pixels = np.stack([img, img // 2, 255 - img], -1) if color else img
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.{fmt}")
    return folder


def test_class_names_counts_and_seeded_split(tmp_path):
    images = fashion([1, 8, 7], [20, 15, 10])  # Trouser, Bag, Sneaker
    root = write(tmp_path / "photos", images)
    (root / "Bag" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"dir:{root}")  # default size 64x64; channels from the images: gray
    assert ds.labels == ("Bag", "Sneaker", "Trouser")  # sorted, as Keras numbers them
    assert ds.x_train.shape[1:] == (64, 64, 1) and ds.x_train.dtype == np.float32
    assert np.bincount(ds.y_test).tolist() == [3, 2, 4] and np.bincount(ds.y_train).tolist() == [12, 8, 16]
    assert ds.details["ignored_files"] == 1 and ds.details["images"] == 45
    same = load_dataset(f"dir:{root}", seed=0)
    other = load_dataset(f"dir:{root}", seed=1)
    np.testing.assert_array_equal(same.x_test.rows, ds.x_test.rows)
    assert not np.array_equal(other.x_test.rows, ds.x_test.rows)
    assert sorted(np.concatenate([ds.x_train.rows, ds.x_test.rows]).tolist()) == list(range(45))
    # Untouched pixels at the images' own size: the PNGs' values / 255, row i = file i.
    exact = load_dataset(f"dir:{root}", image_size=(28, 28))
    originals = np.concatenate([images[name] for name in exact.labels])[..., None]
    np.testing.assert_array_equal(exact.x_train[:], originals[exact.x_train.rows] / np.float32(255))


def test_train_and_test_folders_are_the_splits(tmp_path):
    write(tmp_path / "d" / "train", fashion([0, 9], [12, 9]))
    write(tmp_path / "d" / "test", fashion([0, 9], [3, 4]))
    ds = load_dataset(f"dir:{tmp_path / 'd'}", image_size=(28, 28))
    assert ds.labels == ("Ankle boot", "T-shirt-top")
    assert np.bincount(ds.y_train).tolist() == [9, 12] and np.bincount(ds.y_test).tolist() == [4, 3]
    assert ds.details["split"] == "train/ and test/ folders"
    with pytest.raises(ConfigError, match="has train/ and test/ folders.*drop --test-split"):
        load_dataset(f"dir:{tmp_path / 'd'}", test_split=0.3)


def test_store_equals_eager_decoding_resized_to_the_model_input(tmp_path):
    root = tmp_path / "d"
    write(root, fashion([2, 3], [6, 6]), fmt="jpg", color=True)
    write(root, fashion([4], [5]), fmt="bmp")
    ds = load_dataset(f"dir:{root}", image_size=(20, 14), channels=3)
    assert ds.x_train.shape[1:] == (20, 14, 3)
    files = sorted(p for p in root.rglob("*.*"))  # classes sorted, then names: the store's order
    eager = np.stack([decode_image(p.read_bytes(), (20, 14), 3) for p in files])
    for x in (ds.x_train, ds.x_test):
        np.testing.assert_array_equal(x[:], eager[x.rows] / np.float32(255))
    gray = load_dataset(f"dir:{root}", image_size=(20, 14), channels=1)  # a 1-channel model
    assert gray.x_train.shape[1:] == (20, 14, 1)


@pytest.mark.parametrize("fmt, color, channels", [("png", False, 1), ("gif", False, 1), ("bmp", False, 1),
                                                  ("jpg", True, 3), ("png", True, 3)])
def test_channels_follow_the_images(tmp_path, fmt, color, channels):
    images = fashion([5, 6], [5, 5])
    root = write(tmp_path / "d", images, fmt=fmt, color=color)
    ds = load_dataset(f"dir:{root}", image_size=(28, 28))
    assert ds.input_shape == (28, 28, channels)
    if fmt != "jpg":  # lossless formats: the exact pixels (GIF and BMP gray come back as R = G = B)
        img = images[ds.labels[0]][0]  # file 0 of the store
        expected = np.stack([img, img // 2, 255 - img], -1) if color else img[..., None]
        split = ds.x_train if 0 in ds.x_train.rows else ds.x_test
        row = int(np.flatnonzero(split.rows == 0)[0])
        np.testing.assert_array_equal(split[row], expected / np.float32(255))


def test_one_color_image_makes_the_folder_rgb(tmp_path):
    root = write(tmp_path / "d", fashion([5, 6], [4, 4]))
    write(root, {"Sandal": fashion([5], [1])["Sandal"]}, fmt="jpg", color=True)
    assert load_dataset(f"dir:{root}", image_size=(28, 28)).input_shape == (28, 28, 3)


def test_corrupt_file_is_named_or_skipped(tmp_path, cache):
    root = write(tmp_path / "d", fashion([1, 2], [6, 6]))
    bad = root / "Pullover" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ConfigError, match=r"'.*Pullover/broken\.jpg' is not a decodable image \(.*\): "
                                          r"replace or delete it, or pass --skip-bad-images") as info:
        load_dataset(f"dir:{root}")
    assert "\n" not in str(info.value)
    assert not list(cache.rglob("*.u8"))  # nothing half-written left behind
    ds = load_dataset(f"dir:{root}", skip_bad_images=True)
    assert ds.details["skipped_images"] == 1 and ds.details["skipped"][0].startswith("Pullover/broken.jpg (")
    assert len(ds.y_train) + len(ds.y_test) == 12
    with pytest.raises(ConfigError, match="broken.jpg' is not a decodable image"):  # cached, still refused
        load_dataset(f"dir:{root}")


@pytest.mark.parametrize("layout, match", [
    ({"cat": 3, "dog": 0}, r"class folder '.*dog' has no images \(\.bmp, \.gif, \.jpeg, \.jpg, \.png\)"),
    ({"cat": 3}, r"has 1 class folder: cat, expected at least 2"),
    ({"train/cat": 2, "train/dog": 2, "test/cat": 2, "test/emu": 2},
     r"train/ and test/ have different class folders \(only in train/: dog; only in test/: emu\)"),
    ({"train/cat": 2, "train/dog": 2}, r"has train/ but no test/"),
])
def test_folder_layout_errors(tmp_path, layout, match):
    img = fashion([0], [3])["T-shirt-top"]
    for folder, n in layout.items():
        (tmp_path / "d" / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(img[i]).save(tmp_path / "d" / folder / f"{i}.png")
    with pytest.raises(ConfigError, match=match) as info:
        load_dataset(f"dir:{tmp_path / 'd'}")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="is not a folder"):
        load_dataset(f"dir:{tmp_path / 'nope'}")


def test_cache_is_reused_until_a_file_changes(tmp_path, cache):
    root = write(tmp_path / "d", fashion([1, 2], [5, 5]))
    assert "decode_seconds" in load_dataset(f"dir:{root}", image_size=(28, 28)).details
    again = load_dataset(f"dir:{root}", image_size=(28, 28))
    assert "decode_seconds" not in again.details and len(list((cache / "images").iterdir())) == 1
    path = root / "Pullover" / "000.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    changed = load_dataset(f"dir:{root}", image_size=(28, 28))
    assert "decode_seconds" in changed.details
    assert data_fingerprint(changed) != data_fingerprint(again)
    assert data_fingerprint(changed) == data_fingerprint(load_dataset(f"dir:{root}", image_size=(28, 28)))


def test_streamed_batches_cover_the_split_and_predict_matches(tmp_path):
    import tf_keras as keras

    root = write(tmp_path / "d", fashion([1, 2, 3], [30, 30, 30]))
    ds = load_dataset(f"dir:{root}", image_size=(28, 28), limit=50)
    assert isinstance(ds.x_train, ImageArray) and len(ds.y_train) == 50
    assert np.bincount(ds.y_train).tolist() == [17, 17, 16]  # limit: class-stratified
    train = ds.train_dataset(16, seed=3)
    assert train.options().autotune.enabled is False
    passes = [np.concatenate([y.numpy() for _, y in train]) for _ in range(2)]
    assert all(sorted(p.tolist()) == sorted(ds.y_train.tolist()) for p in passes)
    seen = np.concatenate([x.numpy() for x, _ in train])
    assert np.isclose(np.sort(seen.sum(axis=(1, 2, 3))), np.sort(ds.x_train[:].sum(axis=(1, 2, 3)))).all()
    model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    np.testing.assert_allclose(ds.predict(model, "test", batch_size=7),
                               model.predict(ds.x_test[:], verbose=0), rtol=1e-6, atol=1e-6)


def test_streamed_training_batches_equal_the_in_memory_ones(tmp_path):
    """Below 10,000 training examples both pipelines shuffle the whole split with the same seed,
    so a folder trains exactly as the same pixels held in memory would."""
    from slimpipe.pipeline.data import Dataset

    root = write(tmp_path / "d", fashion([1, 2, 3], [12, 12, 12]))
    ds = load_dataset(f"dir:{root}", image_size=(28, 28))
    eager = Dataset("eager", ds.x_train[:], ds.y_train, ds.x_test[:], ds.y_test, ds.labels)
    for a, b in zip(ds.train_dataset(8, seed=5), eager.train_dataset(8, seed=5)):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
