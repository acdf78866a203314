"""Saving and loading the Keras models that artifacts hold.

Keras artifacts are HDF5 files without optimizer state (the form tfmot's own tutorials measure).
Models that still carry tfmot wrappers need tfmot's custom-object scopes to load, and models
translated from Keras 3's ConvNeXt need slimpipe's LayerScale / StochasticDepth (registered here).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.keras3 import tfk_layers


def save_keras(model, path: Path) -> Path:
    path = Path(path)
    with warnings.catch_warnings():
        # HDF5 is "legacy" to Keras, but it is the format tfmot's tutorials measure sizes in.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`")
        model.save(path, include_optimizer=False, save_format="h5")
    return path


@contextlib.contextmanager
def tfmot_scope():
    import tensorflow_model_optimization as tfmot

    tfk_layers.register()
    with contextlib.ExitStack() as stack:
        stack.enter_context(tfmot.sparsity.keras.prune_scope())
        stack.enter_context(tfmot.clustering.keras.cluster_scope())
        stack.enter_context(tfmot.quantization.keras.quantize_scope())
        yield


def load_keras(path: Path):
    import tf_keras as keras

    # "Compiled the loaded model, but the compiled metrics have yet to be built" is noise here:
    # artifacts are loaded for inference and compiled by the stage that trains them.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    with tfmot_scope():
        return keras.models.load_model(Path(path), compile=False)


def clone_with_weights(model):
    """A copy that shares no layer objects with `model` (tfmot wraps layers in place)."""
    import tf_keras as keras

    with tfmot_scope():
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
