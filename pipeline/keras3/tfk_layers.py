"""tf_keras counterparts of the Keras 3 layers that `keras.applications` defines itself.

ConvNeXt's `LayerScale` (a learned per-channel scale) and `StochasticDepth` (drops a residual
branch while training, the identity at inference) live in Keras 3's application code, not in
`keras.layers`. These are the same computations for tf_keras, registered as
`slimpipe>LayerScale` and `slimpipe>StochasticDepth` so that tf_keras files holding them load
wherever slimpipe is imported (`register()` runs before any Keras file is read).
"""
from __future__ import annotations

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

PACKAGE = "slimpipe"
_CLASSES: dict = {}


def register() -> dict:
    """Define and register the classes once; returns {registered name: class}."""
    if _CLASSES:
        return _CLASSES
    import tensorflow as tf
    import tf_keras as keras

    @keras.saving.register_keras_serializable(package=PACKAGE)
    class LayerScale(keras.layers.Layer):
        """x * gamma, gamma one learned value per channel (Keras 3's ConvNeXt LayerScale)."""

        def __init__(self, init_values, projection_dim, **kwargs):
            super().__init__(**kwargs)
            self.init_values = init_values
            self.projection_dim = projection_dim

        def build(self, input_shape):
            self.gamma = self.add_weight(
                name="gamma", shape=(self.projection_dim,),
                initializer=keras.initializers.Constant(self.init_values), trainable=True)
            super().build(input_shape)

        def call(self, x):
            return x * self.gamma

        def get_config(self):
            return {**super().get_config(), "init_values": self.init_values,
                    "projection_dim": self.projection_dim}

    @keras.saving.register_keras_serializable(package=PACKAGE)
    class StochasticDepth(keras.layers.Layer):
        """Keras 3's ConvNeXt StochasticDepth: while training, drops the whole input of a
        sample with probability `drop_path_rate` (rescaling the rest); the identity otherwise."""

        def __init__(self, drop_path_rate, **kwargs):
            super().__init__(**kwargs)
            self.drop_path_rate = drop_path_rate

        def call(self, x, training=None):
            if not training:
                return x
            keep = 1.0 - self.drop_path_rate
            shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
            return x / keep * tf.floor(keep + tf.random.uniform(shape, 0.0, 1.0))

        def get_config(self):
            return {**super().get_config(), "drop_path_rate": self.drop_path_rate}

    _CLASSES.update({f"{PACKAGE}>LayerScale": LayerScale,
                     f"{PACKAGE}>StochasticDepth": StochasticDepth})
    return _CLASSES
