"""Keras 3 models built in the tests (nothing downloaded, no binary fixtures), and the round
trip every translation test runs: Keras 3 file -> tf_keras -> .h5 -> Keras 3 file."""
import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
from slimpipe.pipeline.keras3.check import outputs, sample_inputs
from slimpipe.pipeline.keras3.out import Keras3Writer
from slimpipe.pipeline.kerasio import load_keras, save_keras
from slimpipe.pipeline.models import load_user_model

def _jitter(model, seed=1, scale=0.1):
    """Random offsets on every weight array, so that a swapped or skipped weight shows."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, scale, w.shape).astype(w.dtype) if w.ndim else w
                       for w in model.get_weights()])
    return model


def _round_trip(keras3_model, tmp_path, name="m.keras", **load):
    """Save, translate to tf_keras (checked), write back for Keras 3 (checked), and compare the
    Keras 3 model that comes back with the one that went in; returns (tf_keras model, record,
    returned Keras 3 model)."""
    import keras

    path = tmp_path / name
    keras3_model.save(path)
    record = {}
    model = load_user_model(path, record=record, **load)
    h5 = save_keras(model, tmp_path / "artifact.h5")
    meta = Keras3Writer(custom=load.get("custom", Keras3Writer().custom)).write(load_keras(h5), h5, kind="keras")
    back = keras.saving.load_model(tmp_path / meta["file"], compile=False,
                                   custom_objects=dict(getattr(load.get("custom"), "keras3", {}) or {}))
    x = sample_inputs(model)
    reference = outputs(keras3_model, x)
    for result in (model, back):
        got = outputs(result, x)
        scale = max(1.0, max(float(np.abs(r).max()) for r in reference))
        assert max(float(np.abs(r - g).max()) for r, g in zip(reference, got)) <= 1e-5 * scale
    assert meta["bytes"] == (tmp_path / meta["file"]).stat().st_size
    return model, record["keras3"], back


@pytest.fixture
def jitter():
    return _jitter


@pytest.fixture
def round_trip():
    return _round_trip
