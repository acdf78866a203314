"""A model's layer graph as its config stores it, in either Keras's format, framework-free.

Keras 3 and tf_keras both store a model as a list of layer entries. A functional model's entry
lists the calls ("inbound nodes") of its layer: Keras 3 writes each call as
`{"args": [...], "kwargs": {...}}` with tensors as `{"class_name": "__keras_tensor__",
"config": {"keras_history": [layer, node, tensor]}}`; tf_keras writes a call as a list of
`[layer, node, tensor, kwargs]`, one per input tensor. A Sequential model lists its layers in
order. `parse` reads all three into one `Graph`; `evaluate` calls a function per entry on
tensors in dependency order, which is how a graph is rebuilt in the other Keras: shared
layers are one function called once per call, nested models are evaluated inside the outer
graph (so the rebuilt model is flat).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from slimpipe.pipeline.errors import ConfigError

MODEL_CLASSES = ("Sequential", "Functional", "Model")
_TENSOR = "__keras_tensor__"


@dataclass(frozen=True)
class Ref:
    """One tensor: output `tensor` of call `node` of layer `layer`."""

    layer: str
    node: int = 0
    tensor: int = 0


@dataclass
class Call:
    args: list
    kwargs: dict


@dataclass
class Entry:
    """One layer of a model config (a nested model is one entry whose config is a model)."""

    name: str
    class_name: str
    module: str | None
    registered_name: str | None
    config: dict
    calls: list[Call] = field(default_factory=list)

    @property
    def is_model(self) -> bool:
        return self.class_name in MODEL_CLASSES and "layers" in self.config

    @property
    def key(self) -> str:
        """The name a custom class is registered under (or its class name)."""
        return self.registered_name or self.class_name


@dataclass
class Graph:
    name: str
    sequential: bool
    entries: list[Entry]
    inputs: list[Ref]
    outputs: list[Ref]

    def input_entries(self) -> list[Entry]:
        by_name = {e.name: e for e in self.entries}
        return [by_name[r.layer] for r in self.inputs]


def parse(class_name: str, config: dict) -> Graph:
    """The graph of a model config (`model.get_config()` or the config stored in a file)."""
    if class_name == "Sequential":
        return _sequential(config)
    if "input_layers" not in config or "output_layers" not in config:
        raise ConfigError(f"model '{config.get('name', '?')}' ({class_name}) has no input and output "
                          "layers in its config: slimpipe takes Sequential and functional models; "
                          "rebuild a subclassed model functionally (keras.Model(inputs, outputs))")
    entries = [_entry(raw, [_call(node) for node in raw.get("inbound_nodes") or []])
               for raw in config["layers"]]
    return Graph(config.get("name", "model"), False, entries, _refs(config["input_layers"]),
                 _refs(config["output_layers"]))


def _entry(raw: dict, calls: list[Call]) -> Entry:
    config = raw.get("config") or {}
    name = raw.get("name") or config.get("name")
    return Entry(str(name), raw["class_name"], raw.get("module"), raw.get("registered_name"),
                 config, calls)


def _sequential(config: dict) -> Graph:
    entries: list[Entry] = []
    layers = list(config.get("layers") or [])
    if not layers or layers[0].get("class_name") != "InputLayer":
        shape = config.get("build_input_shape")
        if not shape:
            raise ConfigError(f"Sequential model '{config.get('name', '?')}' has no input shape: "
                              "build it with keras.Input(shape) as its first layer, then save it again")
        layers.insert(0, {"class_name": "InputLayer", "config": {
            "batch_shape": list(shape), "dtype": "float32", "name": f"{config.get('name', 'model')}_input"}})
    previous = None
    for raw in layers:
        entry = _entry(raw, [] if previous is None else [Call([previous], {})])
        entries.append(entry)
        previous = Ref(entry.name)
    return Graph(config.get("name", "sequential"), True, entries, [Ref(entries[0].name)], [previous])


def _refs(value) -> list[Ref]:
    if value and isinstance(value[0], str):  # Keras 3 writes a single tensor unwrapped
        return [Ref(*value[:3])]
    return [Ref(*v[:3]) for v in value]


def _call(node) -> Call:
    if isinstance(node, dict):  # Keras 3
        return Call([_value(a) for a in node.get("args", [])], dict(node.get("kwargs") or {}))
    refs = [Ref(*item[:3]) for item in node]  # tf_keras: [layer, node, tensor, kwargs] per input
    kwargs = dict(node[0][3]) if node and len(node[0]) > 3 and node[0][3] else {}
    return Call([refs[0] if len(refs) == 1 else refs], kwargs)


def _value(value):
    if isinstance(value, dict) and value.get("class_name") == _TENSOR:
        return Ref(*value["config"]["keras_history"][:3])
    if isinstance(value, list):
        return [_value(v) for v in value]
    return value


def refs_in(value) -> list[Ref]:
    """Every tensor reference inside a call argument."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []


def _resolve(value, tensors: dict):
    if isinstance(value, Ref):
        return tensors[value]
    if isinstance(value, list):
        return [_resolve(v, tensors) for v in value]
    return value


def evaluate(graph: Graph, inputs: list, functions: dict[str, Callable[[list, dict], Any]]) -> list:
    """Call `functions[entry.name](args, kwargs)` for every call of every non-input entry, in
    dependency order, with tensors in place of references; returns the graph's outputs.
    `inputs` are the tensors bound to the graph's input layers."""
    tensors = {ref: tensor for ref, tensor in zip(graph.inputs, inputs)}
    pending = [(e, i, c) for e in graph.entries if e.class_name != "InputLayer"
               for i, c in enumerate(e.calls)]
    while pending:
        waiting = []
        for entry, index, call in pending:
            if not all(r in tensors for r in refs_in(call.args)):
                waiting.append((entry, index, call))
                continue
            out = functions[entry.name](_resolve(call.args, tensors), call.kwargs)
            for t, tensor in enumerate(out if isinstance(out, (list, tuple)) else [out]):
                tensors[Ref(entry.name, index, t)] = tensor
        if len(waiting) == len(pending):
            names = ", ".join(sorted({e.name for e, _, _ in waiting}))
            raise ConfigError(f"model '{graph.name}': the inputs of layers {names} are never computed; "
                              "the config is inconsistent: save the model again")
        pending = waiting
    missing = [r.layer for r in graph.outputs if r not in tensors]
    if missing:
        raise ConfigError(f"model '{graph.name}': its outputs {missing} are never computed; "
                          "save the model again")
    return [tensors[r] for r in graph.outputs]
