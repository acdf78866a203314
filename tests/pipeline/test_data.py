"""pipeline.data: upstream file formats written byte-for-byte by the tests, then loaded."""
import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
from slimpipe.pipeline import data as data_mod
from slimpipe.pipeline.data import tfds_sets
from slimpipe.pipeline.data import (DATASETS, FASHION_MNIST_LABELS, IDX_FILES, load_dataset, read_idx,
                           stratified_subset)
from slimpipe.pipeline.errors import ConfigError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No real home, no data dirs, no system package, and every Keras download fails."""
    import tf_keras

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SLIMPIPE_DATA_DIR", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {})

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x: None -- [Errno -3] "
                        "Temporary failure in name resolution\nsecond line")

    for name in ("fashion_mnist", "mnist", "cifar10"):
        monkeypatch.setattr(getattr(tf_keras.datasets, name), "load_data", no_network)
    return home


# ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    """The upstream IDX layout: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder: Path, n_train=20, n_test=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for fname, key in zip(IDX_FILES, ("x_train", "y_train", "x_test", "y_test")):
        (folder / fname).write_bytes(gzip.compress(idx_bytes(arrays[key])))
    return arrays


def test_idx_magic_numbers_match_upstream(tmp_path):
    images = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    labels = idx_bytes(np.zeros(2, np.uint8))
    assert images[:4] == (0x00000803).to_bytes(4, "big")
    assert labels[:4] == (0x00000801).to_bytes(4, "big")
    assert images[4:16] == struct.pack(">3I", 2, 28, 28)


def test_read_idx_gzip_and_plain(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


@pytest.mark.parametrize("corrupt, match", [
    (lambda raw: gzip.compress(raw[:-7]), r"has \d+ bytes but its header \(3, 28, 28\) needs"),
    (lambda raw: gzip.compress(raw)[:40], "unreadable or truncated"),
    (lambda raw: gzip.compress(raw[:9]), "truncated inside its header"),
    (lambda raw: gzip.compress(b"<html>not found</html>"), "is not an IDX file"),
    (lambda raw: b"", "is not an IDX file"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, match):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(idx_bytes(np.ones((3, 28, 28), np.uint8))))
    with pytest.raises(ConfigError, match=match):
        read_idx(path)


def test_mnist_from_idx_files_in_data_dir(tmp_path):
    arrays = write_idx_set(tmp_path / "d")
    ds = load_dataset("mnist", data_dir=tmp_path / "d")
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.labels == tuple("0123456789")
    assert ds.normalization == {"scale": 1 / 255.0, "offset": 0.0}


def test_truncated_idx_in_data_set_is_config_error(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / IDX_FILES[2]
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_mismatched_idx_counts_are_config_error(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / IDX_FILES[1]).write_bytes(gzip.compress(idx_bytes(np.zeros(7, np.uint8))))
    with pytest.raises(ConfigError, match="do not match: train images"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("where", ["slimpipe_env", "slimpipe_env_subdir", "keras_cache", "system"])
def test_fashion_mnist_search_locations(tmp_path, offline, monkeypatch, where):
    folder = {
        "slimpipe_env": tmp_path / "env",
        "slimpipe_env_subdir": tmp_path / "env" / "fashion_mnist",
        "keras_cache": offline / ".keras" / "datasets" / "fashion-mnist",
        "system": tmp_path / "usr-share",
    }[where]
    write_idx_set(folder)
    if where.startswith("slimpipe_env"):
        monkeypatch.setenv("SLIMPIPE_DATA_DIR", str(tmp_path / "env"))
    if where == "system":
        monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {"fashion_mnist": (folder,)})
    ds = load_dataset("fashion_mnist")
    assert ds.labels == FASHION_MNIST_LABELS and ds.x_train.shape == (20, 28, 28, 1)


def test_data_dir_wins_over_env(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "arg", n_train=12)
    write_idx_set(tmp_path / "env", n_train=30)
    monkeypatch.setenv("SLIMPIPE_DATA_DIR", str(tmp_path / "env"))
    assert len(load_dataset("mnist", data_dir=tmp_path / "arg").x_train) == 12
    assert len(load_dataset("mnist").x_train) == 30


def test_mnist_npz_keras_cache(offline):
    rng = np.random.default_rng(1)
    cache = offline / ".keras" / "datasets"
    cache.mkdir(parents=True)
    x_train = rng.integers(0, 256, (15, 28, 28), dtype=np.uint8)
    y_train = (np.arange(15) % 10).astype(np.uint8)
    np.savez(cache / "mnist.npz", x_train=x_train, y_train=y_train,
             x_test=x_train[:5], y_test=y_train[:5])
    ds = load_dataset("mnist", limit=10)
    assert ds.x_train.shape == (10, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert sorted(ds.y_train.tolist()) == list(range(10))  # stratified: one of each class
    assert ds.labels[3] == "3"


@pytest.mark.skipif(not (DEBIAN_FASHION / IDX_FILES[0]).is_file(),
                    reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian_package(monkeypatch):
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIRS", {"fashion_mnist": (DEBIAN_FASHION,)})
    ds = load_dataset("fashion_mnist", limit=1000, seed=3)
    assert ds.x_train.shape == (1000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() == 1.0
    assert 0.2 < ds.x_test.mean() < 0.4  # Fashion-MNIST's mean pixel is ~0.286
    assert ds.num_classes == 10 and ds.labels[0] == "T-shirt/top" and ds.labels[9] == "Ankle boot"
    assert np.bincount(ds.y_train, minlength=10).tolist() == [100] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10


# ---- limit and image_size -------------------------------------------------------------------

def test_stratified_subset_is_balanced_and_deterministic():
    y = np.repeat(np.arange(4), [50, 30, 10, 10])
    a = stratified_subset(y, 20, seed=0)
    assert np.bincount(y[a]).tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(a, stratified_subset(y, 20, seed=0))
    assert not np.array_equal(a, stratified_subset(y, 20, seed=1))
    b = stratified_subset(y, 60, seed=0)  # small classes run out: the rest comes from big ones
    assert len(np.unique(b)) == 60 and np.bincount(y[b]).tolist() == [20, 20, 10, 10]


@pytest.mark.parametrize("limit", [0, -5, 2.5, True, "10"])
def test_bad_limit(tmp_path, limit):
    with pytest.raises(ConfigError, match="limit must be a whole number >= 1"):
        load_dataset("mnist", limit=limit, data_dir=tmp_path)


def test_image_size_resizes_both_splits(tmp_path):
    write_idx_set(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, image_size=(32, 30), limit=10)
    assert ds.x_train.shape == (10, 32, 30, 1) and ds.x_test.shape == (10, 32, 30, 1)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


# ---- CIFAR-10 -------------------------------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Writes bytes/str the way Python 2's cPickle wrote str (SHORT_BINSTRING/BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # Upstream (numpy 1.x, Python 2) names the array rebuilder numpy.core.multiarray.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
               b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_members(n_per_batch=2, n_test=3) -> dict[str, bytes]:
    members = {}
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        data = np.zeros((n, 3072), np.uint8)
        data[:, :1024], data[:, 1024:2048], data[:, 2048:] = 10, 20, 30  # R, G, B planes
        data[:, 34] = 200 + i  # red at row 1, column 2 (1 * 32 + 2)
        data[:, 1024 + 34] = 100
        data[:, 2048 + 34] = 50
        members[name] = py2_pickle({
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"labels": [(i + j) % 10 for j in range(n)],
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        })
    members["batches.meta"] = py2_pickle({b"label_names": CIFAR_NAMES, b"num_cases_per_batch": 10000,
                                          b"num_vis": 3072})
    return members


def write_cifar_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_cifar_pickles_look_like_upstream():
    raw = cifar_members()["data_batch_1"]
    assert raw[:2] == b"\x80\x02"  # protocol 2
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw


def test_cifar10_archive_pixel_order_and_labels(tmp_path):
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_members())
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(ds.x_train[0, 0, 0], np.array([10, 20, 30]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_train[0, 1, 2], np.array([200, 100, 50]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_train[2, 1, 2, 0], 201 / 255.0, rtol=1e-6)  # batch 2 follows 1
    np.testing.assert_allclose(ds.x_test[0, 1, 2, 0], 205 / 255.0, rtol=1e-6)
    assert ds.y_train.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert ds.labels == tuple(n.decode() for n in CIFAR_NAMES)


def test_cifar10_extracted_folder_in_keras_cache(offline):
    folder = offline / ".keras" / "datasets" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, raw in cifar_members().items():
        (folder / name).write_bytes(raw)
    ds = load_dataset("cifar10", limit=5)
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.num_classes == 10


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["whole_batch", "inside_dict"])
def test_cifar10_malicious_pickle_is_refused_and_not_run(tmp_path, payload):
    marker = tmp_path / "pwned"
    members = cifar_members()
    evil = Evil(marker)
    obj = evil if payload == "whole_batch" else {b"data": evil, b"labels": [0]}
    members["test_batch"] = py2_pickle(obj)
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(ConfigError, match=r"test_batch' is not a plain upstream batch .*refusing global "
                                          r"(posix|os|nt)\.system.*nothing in it was run"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar10_truncated_archive(tmp_path):
    path = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_members())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ConfigError, match="unreadable or truncated"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---- npz:PATH -------------------------------------------------------------------------------

def good_npz(**overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (8, 6, 5), dtype=np.uint8),
              "y_train": np.array([0, 1, 2, 0, 1, 2, 0, 1]),
              "x_test": rng.integers(0, 256, (4, 6, 5), dtype=np.uint8),
              "y_test": np.array([2, 1, 0, 2])}
    arrays.update(overrides)
    return {k: v for k, v in arrays.items() if v is not None}


def test_npz_uint8_gray(tmp_path):
    arrays = good_npz(labels=np.array(["cat", "dog", "emu"]))
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.x_train.shape == (8, 6, 5, 1) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["x_test"] / 255.0, rtol=1e-6)
    assert ds.labels == ("cat", "dog", "emu") and ds.y_train.dtype == np.int64
    assert ds.normalization["scale"] == pytest.approx(1 / 255.0)


def test_npz_float_rgb_kept_as_is(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", **good_npz(x_train=x, x_test=x[:4], y_test=np.array([[0], [1], [3], [1]])))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}", limit=3)
    assert ds.x_test.shape == (4, 4, 4, 3)
    np.testing.assert_array_equal(ds.x_test, x[:4])
    assert ds.labels == ("0", "1", "2", "3")  # labels run up to 3 in the test split
    assert ds.normalization == {"scale": 1.0, "offset": 0.0}
    assert len(ds.x_train) == 3 and sorted(ds.y_train.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("overrides, match", [
    ({"x_test": None}, r"lacks array\(s\) x_test .*np\.savez"),
    ({"y_train": np.arange(7) % 3}, "x_train has 8 images but y_train has 7 labels"),
    ({"y_train": np.zeros(8, np.float32)}, r"y_train has dtype float32, expected integer class ids.*astype"),
    ({"y_test": np.eye(3)[[0, 1, 2, 0]]}, r"y_test has shape \(4, 3\), expected \(N,\).*argmax"),
    ({"x_train": np.full((8, 6, 5), np.nan, np.float32), "x_test": np.zeros((4, 6, 5), np.float32)},
     "x_train contains NaN"),
    ({"x_test": np.zeros((4, 7, 5), np.uint8)}, r"x_train is uint8 \(6, 5, 1\) but x_test is uint8 \(7, 5, 1\)"),
    ({"y_test": np.array([0, -1, 0, 0])}, "negative class id"),
    ({"labels": np.array(["a", "b"])}, "labels names 2 classes but the labels go up to 2"),
])
def test_npz_bad_files(tmp_path, overrides, match):
    np.savez(tmp_path / "bad.npz", **good_npz(**overrides))
    with pytest.raises(ConfigError, match=match):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_or_not_npz(tmp_path):
    np.savez(tmp_path / "d.npz", **good_npz())
    with pytest.raises(ConfigError, match="npz file .*nope.npz' not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(ConfigError, match="is not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ConfigError, match="single .npy array"):
        load_dataset(f"npz:{tmp_path / 'a.npy'}")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:200])
    with pytest.raises(ConfigError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'cut.npz'}")
    np.savez(tmp_path / "obj.npz", **good_npz(labels=np.array(["a", 1, None], dtype=object)))
    with pytest.raises(ConfigError, match="object arrays"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")


# ---- tfds:NAME ------------------------------------------------------------------------------

def test_tfds_mock_rock_paper_scissors():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("tfds:rock_paper_scissors", limit=6, image_size=(16, 16))
    assert ds.x_train.shape == (6, 16, 16, 3) and ds.x_test.shape == (12, 16, 16, 3)
    assert ds.labels == ("rock", "paper", "scissors")
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.x_train.std() > 0.0  # real decoded pixels, not zeros
    assert set(ds.y_train.tolist()) <= {0, 1, 2} and ds.y_train.dtype == np.int64


def test_tfds_without_test_split_carves_last_fifth(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    monkeypatch.setattr(tfds_sets, "_has_test_split", lambda info: False)
    with tfds.testing.mock_data(num_examples=10):
        ds = load_dataset("tfds:rock_paper_scissors", image_size=(8, 8))
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2


def test_tfds_unknown_name():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ConfigError, match="tfds:no_such_set_xyz could not be loaded"):
            load_dataset("tfds:no_such_set_xyz")


def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"tfds:cats_vs_dogs needs tensorflow-datasets: "
                                          r"pip install 'slimpipe\[tfds\]'"):
        load_dataset("tfds:cats_vs_dogs")


# ---- names and offline failures -------------------------------------------------------------

def test_datasets_listing_names_every_form():
    assert {"fashion_mnist", "mnist", "cifar10", "npz:PATH", "dir:PATH", "tfds:NAME"} <= set(DATASETS)
    assert all(isinstance(v, str) and "\n" not in v for v in DATASETS.values())


def test_unknown_dataset_suggests_close_name():
    with pytest.raises(ConfigError, match=r"unknown data set 'fashion-mnist': did you mean "
                                          r"'fashion_mnist'\? expected one of .*cifar10"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize("name, match", [
    ("fashion_mnist", r"train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"),
    ("mnist", r"t10k-labels-idx1-ubyte.gz.*mnist.npz"),
    ("cifar10", r"cifar-10-python.tar.gz \(the upstream archive\).*\$SLIMPIPE_DATA_DIR"),
])
def test_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch, name, match):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SLIMPIPE_DATA_DIR", str(empty))
    with pytest.raises(ConfigError, match=match) as info:
        load_dataset(name)
    message = str(info.value)
    assert "\n" not in message and "name resolution" in message and "not found offline" in message


def test_training_pipeline_has_autotuning_off_and_visits_every_example_once_per_pass():
    """Autotuning off (its model thread stalled fit's end by up to 45 s here); shuffling and
    batching still give each example exactly once per pass, in a new order each pass."""
    from slimpipe.pipeline.data import Dataset

    x = np.arange(300, dtype=np.float32).reshape(300, 1)
    ds = Dataset(name="t", x_train=x, y_train=np.arange(300), x_test=x[:50], y_test=np.arange(50),
                 labels=("a",))
    train = ds.train_dataset(64, seed=1)
    assert train.options().autotune.enabled is False
    assert ds.test_dataset(64).options().autotune.enabled is False
    passes = [np.concatenate([b.numpy() for b, _ in train]).ravel() for _ in range(2)]
    assert [len(p) for p in passes] == [300, 300]
    assert all(sorted(p) == list(range(300)) for p in passes)
    assert not np.array_equal(passes[0], passes[1])
    batches = [len(b) for b, _ in ds.test_dataset(64)]
    assert batches == [50] and np.array_equal(np.concatenate([b.numpy() for b, _ in ds.test_dataset(16)]).ravel(),
                                              np.arange(50))


def test_hold_out_a_validation_split():
    from slimpipe.pipeline.data.dataset import hold_out
    from tests.conftest import make_tiny_data

    data = make_tiny_data(n_train=400, n_test=50)
    fit, search = hold_out(data, 0.25, seed=3)
    assert len(fit.y_train) + len(search.y_test) == 400 and len(search.y_test) == pytest.approx(100, abs=4)
    assert np.array_equal(fit.x_test, data.x_test)  # the test split is untouched
    assert np.array_equal(search.x_train, fit.x_train)
    for cls in range(4):  # a share of each class
        share = np.mean(search.y_test == cls) / np.mean(data.y_train == cls)
        assert share == pytest.approx(0.25 * 400 / len(search.y_test), rel=0.1)
    rows = {x.tobytes() for x in fit.x_train}
    assert not any(x.tobytes() in rows for x in search.x_test)  # disjoint
    again, _ = hold_out(data, 0.25, seed=3)
    assert np.array_equal(again.y_train, fit.y_train)
    other, _ = hold_out(data, 0.25, seed=4)
    assert not np.array_equal(other.y_train, fit.y_train)
    assert fit.record()["validation"] == {"fraction": 0.25, "seed": 3, "examples": len(search.y_test), "of": 400}
    with pytest.raises(ConfigError, match="fraction"):
        hold_out(data, 1.0)
