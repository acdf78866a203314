"""Rebuild a loaded Keras 3 model as a tf_keras model, layer by layer, and copy its weights.

The graph comes from the Keras 3 model's config (see `graph`); every layer becomes the tf_keras
layer of the same class built from its converted config (see `table`), called on tf_keras
tensors in the same order, so shared layers stay shared and branches stay branches. Nested
models are inlined (tfmot wraps layers of flat models only). keras.ops arithmetic becomes merge
or Rescaling layers; Keras 3's hard_sigmoid / hard_silu become Rescaling, ReLU(6) and Multiply
layers. Weights are copied from each Keras 3 layer to its tf_keras twin after the shapes and
counts are checked.
"""
from __future__ import annotations

from typing import Any, Callable

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3 import tfk_layers
from slimpipe.pipeline.keras3.graph import Entry, Graph, evaluate, parse
from slimpipe.pipeline.keras3.scan import application_layer, is_op
from slimpipe.pipeline.keras3.table import ACTIVATIONS_IN, DECOMPOSED, OPS, activation_name, convert_config

Function = Callable[[list, dict], Any]


class TfKerasBuilder:
    """>>> model = TfKerasBuilder(keras3_model).build()"""

    def __init__(self, source, *, custom: dict | None = None, config: dict | None = None):
        self.source = source  # the Keras 3 model: its layers hold the weights and their classes
        self.config = config or source.get_config()
        self.custom = dict(custom or {})  # registered name -> tf_keras class
        self.pairs: list[tuple[Any, Any]] = []  # (Keras 3 layer, tf_keras layer) with weights
        self.order: list = []  # tf_keras layers in the order they were made
        self.names: set[str] = set()
        self.branched = False  # a decomposition added a second path (Sequential no longer fits)

    def build(self):
        import tf_keras as keras

        tfk_layers.register()
        graph = parse(type(self.source).__name__ if type(self.source).__name__ == "Sequential"
                      else "Functional", self.config)
        inputs = [self._input(e) for e in graph.input_entries()]
        functions = self._functions(graph, ())
        if graph.sequential and not self.branched:
            model = keras.Sequential([inputs[0], *self.order], name=graph.name)
        else:
            outputs = evaluate(graph, inputs, functions)
            model = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                                outputs if len(outputs) > 1 else outputs[0], name=graph.name)
        self.copy_weights()
        return model

    def copy_weights(self) -> None:
        for src, dst in self.pairs:
            weights, slots = src.get_weights(), dst.get_weights()
            shapes = [tuple(w.shape) for w in weights]
            if shapes != [tuple(s.shape) for s in slots]:
                raise ConfigError(f"layer '{src.name}' ({type(src).__name__}): its Keras 3 weights have "
                                  f"shapes {shapes}, its tf_keras translation "
                                  f"{[tuple(s.shape) for s in slots]}: the layer cannot be translated; "
                                  "rebuild it from standard keras.layers")
            dst.set_weights(weights)

    # -- graph pieces ------------------------------------------------------------------------
    def _name(self, name: str, path: tuple[str, ...]) -> str:
        if name in self.names and path:
            name = f"{path[-1]}_{name}"
        if name in self.names:
            raise ConfigError(f"two layers of the model are named '{name}' once nested models are "
                              "inlined: rename one of them")
        self.names.add(name)
        return name

    def _input(self, entry: Entry):
        import tf_keras as keras

        cfg = entry.config
        if cfg.get("sparse") or cfg.get("ragged"):
            raise ConfigError(f"input '{entry.name}' is sparse or ragged: slimpipe takes dense image inputs")
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        dtype = cfg.get("dtype") if isinstance(cfg.get("dtype"), str) else "float32"
        return keras.Input(batch_shape=tuple(shape), dtype=dtype, name=self._name(entry.name, ()))

    def _functions(self, graph: Graph, path: tuple[str, ...]) -> dict[str, Function]:
        return {e.name: self._function(e, path) for e in graph.entries if e.class_name != "InputLayer"}

    def _function(self, entry: Entry, path: tuple[str, ...]) -> Function:
        if entry.is_model:
            return self._nested(entry, path)
        if is_op(entry):
            return self._op(entry, path)
        return self._layer(entry, path)

    def _nested(self, entry: Entry, path: tuple[str, ...]) -> Function:
        graph = parse(entry.class_name, entry.config)
        if not graph.sequential:
            self.branched = True
        functions = self._functions(graph, path + (entry.name,))

        def call(args, kwargs):
            _plain_call(entry, args, kwargs)
            outputs = evaluate(graph, args[0] if isinstance(args[0], list) else [args[0]], functions)
            return outputs if len(outputs) > 1 else outputs[0]
        return call

    def _source_layer(self, path: tuple[str, ...]):
        layer = self.source
        for name in path:
            layer = layer.get_layer(name)
        return layer

    def _layer(self, entry: Entry, path: tuple[str, ...]) -> Function:
        src = self._source_layer(path + (entry.name,))
        if entry.class_name == "Lambda":
            return self._lambda(entry, src, path)
        cls = self._target_class(entry)
        config = convert_config(entry.name, entry.class_name, entry.config, type(src), cls, direction="in")
        act = activation_name(config.get("activation")) if "activation" in config else None
        post, helpers = None, []
        if act in DECOMPOSED:
            config["activation"] = "linear"
            if entry.class_name == "Activation":  # the decomposition is the whole layer
                post, helpers = self._decompose(act, entry.name, path, final=entry.name)
                self.order.extend(helpers)
                return lambda args, kwargs: post(args[0])
            post, helpers = self._decompose(act, entry.name, path, final=None)
        elif act is not None:
            config["activation"] = ACTIVATIONS_IN[act]
        config["name"] = self._name(entry.name, path)
        layer = cls.from_config(config)
        self.order += [layer, *helpers]
        if src.weights:
            self.pairs.append((src, layer))
        return _caller(entry, layer, post)

    def _target_class(self, entry: Entry):
        import tf_keras as keras

        if entry.key in self.custom or entry.class_name in self.custom:
            return self.custom.get(entry.key) or self.custom[entry.class_name]
        registered = application_layer(entry)
        if registered is not None:
            return tfk_layers.register()[registered]
        return getattr(keras.layers, entry.class_name)

    def _lambda(self, entry: Entry, src, path):
        import tf_keras as keras

        layer = keras.layers.Lambda(src.function, name=self._name(entry.name, path))
        self.order.append(layer)
        return _caller(entry, layer, None)

    def _decompose(self, activation: str, base: str, path, final: str | None):
        """hard_sigmoid(x) = relu6(x + 3) / 6 and hard_silu(x) = x * hard_sigmoid(x), as layers;
        returns (function, layers). `final` names the last layer (else it is derived from base)."""
        import tf_keras as keras

        L = keras.layers
        silu = activation != "hard_sigmoid"
        self.branched = self.branched or silu
        last = final if final and not silu else f"{base}_hard_sigmoid"
        steps = [L.Rescaling(1.0, offset=3.0, name=self._name(f"{base}_hard_sigmoid_add", path)),
                 L.ReLU(6.0, name=self._name(f"{base}_hard_sigmoid_relu6", path)),
                 L.Rescaling(1.0 / 6.0, name=self._name(last, path))]
        times = L.Multiply(name=self._name(final or f"{base}_hard_silu", path)) if silu else None

        def apply(x):
            y = x
            for step in steps:
                y = step(y)
            return times([x, y]) if times is not None else y
        return apply, steps + ([times] if times is not None else [])

    def _op(self, entry: Entry, path) -> Function:
        import tf_keras as keras

        name = self._name(entry.name, path)

        def call(args, kwargs):
            a, b = args
            if not isinstance(a, (int, float)) and not isinstance(b, (int, float)):
                return getattr(keras.layers, OPS[entry.class_name])(name=name)([a, b])
            tensor, number, first = (a, float(b), True) if isinstance(b, (int, float)) else (b, float(a), False)
            scale, offset = {"Add": (1.0, number), "Multiply": (number, 0.0),
                             "Subtract": (1.0, -number) if first else (-1.0, number),
                             "Divide": (1.0 / number, 0.0), "TrueDivide": (1.0 / number, 0.0)}[entry.class_name]
            return keras.layers.Rescaling(scale, offset=offset, name=name)(tensor)
        self.branched = True  # ops exist only in functional models
        return call


def _plain_call(entry: Entry, args: list, kwargs: dict) -> None:
    """Refuse calls with more than one input argument or with keyword arguments. A stored
    `training=` is ignored: Keras 3 lets the model's own training flag override it, as
    tf_keras does when the node does not fix it."""
    if len(args) != 1:
        raise ConfigError(f"layer '{entry.name}' ({entry.class_name}) is called with {len(args)} "
                          "positional arguments: slimpipe translates layers called on one input")
    extra = [k for k, v in kwargs.items() if v is not None and k != "training"]
    if extra:
        raise ConfigError(f"layer '{entry.name}' ({entry.class_name}) is called with "
                          f"{', '.join(extra)}: slimpipe translates plain calls")


def _caller(entry: Entry, layer, post) -> Function:
    def call(args, kwargs):
        _plain_call(entry, args, kwargs)
        out = layer(args[0])
        return post(out) if post is not None else out
    return call
