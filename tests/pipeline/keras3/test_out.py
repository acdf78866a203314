"""pipeline.keras3.out: the checked Keras 3 copy written beside a run's Keras artifacts."""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import keras
import tf_keras

from slimpipe.pipeline.artifacts import content_sha256
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.errors import ExportValidationError
from slimpipe.pipeline.keras3.custom import CustomObjects
from slimpipe.pipeline.keras3.out import Keras3Writer, keras3_files
from slimpipe.pipeline.kerasio import save_keras


@dataclass(frozen=True)
class _Stage:
    name: ClassVar[str] = "test"


def test_save_model_writes_a_checked_keras3_copy(tmp_path, tiny_data, tiny_model):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, keras3=Keras3Writer())
    ctx.stage_dir = tmp_path / "01-x"
    art = ctx.save_model(_Stage(), tiny_model, "trained", parent=None, kind="keras")
    record = art.meta["keras3"]
    path = tmp_path / "01-x" / "trained.keras"
    assert record["file"] == "trained.keras" and record["bytes"] == path.stat().st_size
    assert record["sha256"] == content_sha256(path) and record["max_abs_diff"] <= 1e-6
    back = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(back(x)), tiny_model(x).numpy(), atol=1e-6)
    assert keras3_files(ctx.artifacts + [art], tmp_path) == [{
        "artifact": "trained", "path": "01-x/trained.keras", "bytes": record["bytes"],
        "sha256": record["sha256"], "max_abs_diff": record["max_abs_diff"]}]
    pruning = ctx.save_model(_Stage(), tiny_model, "pruning", parent=art, kind="keras:pruning")
    assert "tfmot training wrappers" in pruning.meta["keras3"]["skipped"]
    assert not (tmp_path / "01-x" / "pruning.keras").exists()


def test_runs_from_tf_keras_write_no_keras3_copy(ctx, tiny_model):
    art = ctx.save_model(_Stage(), tiny_model, "trained", parent=None, kind="keras")
    assert "keras3" not in art.meta and not list(ctx.stage_dir.glob("*.keras"))


def test_a_copy_that_differs_is_not_written(tmp_path):
    """A custom pair whose Keras 3 class computes something else: the check stops the run."""
    class Shift2(tf_keras.layers.Layer):
        def call(self, x):
            return x + 1.0

    class Shift3(keras.layers.Layer):
        def call(self, x):
            return x + 1.5

    inputs = tf_keras.Input((4, 4, 1), name="image")
    model = tf_keras.Model(inputs, tf_keras.layers.Flatten()(Shift2(name="shift")(inputs)))
    h5 = tmp_path / "m.h5"
    writer = Keras3Writer(custom=CustomObjects({"Shift3": Shift3}, {"Shift3": Shift2}))
    with pytest.raises(ExportValidationError, match=r"the Keras 3 copy of 'm' differs from the tf_keras model "
                                                    r"by up to 0.5 .*it was not written"):
        writer.write(model, save_keras(model, h5), kind="keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
