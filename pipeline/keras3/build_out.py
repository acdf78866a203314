"""Rebuild a tf_keras model as a Keras 3 model, layer by layer, and copy its weights.

The mirror of `build_in` for the models slimpipe writes back: flat Sequential or functional
tf_keras models of the layers in `table.LAYERS`, slimpipe's LayerScale / StochasticDepth
(back to Keras 3's ConvNeXt classes) and the user's --custom-objects classes. Keras 3 cannot
load every tf_keras .h5 itself (its legacy loader refuses, e.g., the unused options tf_keras
stores for separable convs), so the config is converted here with the same rules as on the way
in.
"""
from __future__ import annotations

import importlib
from typing import Any

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.custom import NONE, CustomObjects
from slimpipe.pipeline.keras3.graph import Entry, evaluate, parse
from slimpipe.pipeline.keras3.table import (ACTIVATIONS_OUT, APPLICATION_LAYERS, LAYERS, activation_name,
                                            convert_config)

_APPLICATION_OUT = {tfk: key for key, tfk in APPLICATION_LAYERS.items()}


class Keras3Builder:
    """>>> keras3_model = Keras3Builder(tf_keras_model).build()"""

    def __init__(self, source, *, custom: CustomObjects = NONE):
        self.source = source
        self.custom = custom
        self.pairs: list[tuple[Any, Any]] = []  # (tf_keras layer, Keras 3 layer) with weights
        self.order: list = []

    def build(self):
        import keras
        import tf_keras

        sequential = isinstance(self.source, tf_keras.Sequential)
        graph = parse("Sequential" if sequential else "Functional", self.source.get_config())
        inputs = [self._input(e) for e in graph.input_entries()]
        functions = {e.name: self._layer(e) for e in graph.entries if e.class_name != "InputLayer"}
        if graph.sequential:
            model = keras.Sequential([inputs[0], *self.order], name=graph.name)
        else:
            outputs = evaluate(graph, inputs, functions)
            model = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                                outputs if len(outputs) > 1 else outputs[0], name=graph.name)
        for src, dst in self.pairs:
            weights, slots = src.get_weights(), dst.get_weights()
            if [w.shape for w in weights] != [tuple(s.shape) for s in slots]:
                raise ConfigError(f"layer '{src.name}' ({type(src).__name__}) has weights of shapes "
                                  f"{[w.shape for w in weights]} but its Keras 3 translation "
                                  f"{[tuple(s.shape) for s in slots]}: it cannot be written for Keras 3")
            dst.set_weights(weights)
        return model

    def _input(self, entry: Entry):
        import keras

        cfg = entry.config
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        return keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype") or "float32", name=entry.name)

    def _layer(self, entry: Entry):
        if entry.is_model:
            raise ConfigError(f"layer '{entry.name}' is a nested model: slimpipe writes flat models for "
                              "Keras 3")
        src = self.source.get_layer(entry.name)
        if entry.class_name == "Lambda":
            import keras

            layer = keras.layers.Lambda(src.function, name=entry.name)
        else:
            cls = self._target_class(entry, src)
            config = convert_config(entry.name, entry.class_name, entry.config, type(src), cls,
                                    direction="out")
            if "activation" in config:
                config["activation"] = self._activation(entry, config["activation"])
            layer = cls.from_config(config)
        self.order.append(layer)
        if src.weights:
            self.pairs.append((src, layer))

        def call(args, kwargs):  # a stored training= is the model's to set, as on the way in
            return layer(args[0])
        return call

    def _target_class(self, entry: Entry, src):
        import keras

        for key, cls in self.custom.tf_keras.items():
            if type(src) is cls:
                if key not in self.custom.keras3:
                    raise ConfigError(f"layer '{entry.name}' ({entry.class_name}) has no Keras 3 class in "
                                      f"--custom-objects {self.custom.path}: give the pair (Keras 3 class, "
                                      "tf_keras class)")
                return self.custom.keras3[key]
        if entry.key in _APPLICATION_OUT:
            module, name = _APPLICATION_OUT[entry.key]
            return getattr(importlib.import_module(module), name)
        if entry.class_name in LAYERS and hasattr(keras.layers, entry.class_name):
            return getattr(keras.layers, entry.class_name)
        raise ConfigError(f"layer '{entry.name}' ({entry.class_name}) has no Keras 3 equivalent "
                          "slimpipe knows: it cannot be written for Keras 3")

    @staticmethod
    def _activation(entry: Entry, value):
        name = activation_name(value)
        if name not in ACTIVATIONS_OUT:
            raise ConfigError(f"layer '{entry.name}' ({entry.class_name}) uses activation {name or value!r}, "
                              "which computes differently (or not at all) in Keras 3: it cannot be written "
                              "for Keras 3")
        return ACTIVATIONS_OUT[name]
