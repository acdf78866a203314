"""Layer selectors: which layers a stage works on, by name or by a rule any model satisfies.

A recipe names layers with selectors, so that one recipe fits every classifier:

>>> select(("!@input", "!@output"), layer_infos(model))     # every candidate but stem and logits
['conv2', 'conv3', 'fc1']
>>> select(("@share:0.5",), layer_infos(model))              # the largest layers, half the weights
['fc1']

A selector is one string:

- `NAME`: the layer of that name;
- `re:PATTERN`: every candidate whose whole name the regular expression matches;
- `@all`: every candidate;
- `@conv`, `@dense`, `@depthwise`: candidates of that family (Conv1D/2D/3D and transposed
  convolutions; Dense; DepthwiseConv2D and SeparableConv2D);
- `@input`: the candidates the model's input reaches through layers without a kernel (the stem
  convolution, also behind Rescaling, Resizing or padding);
- `@output`: the candidates that reach the model's output through layers without a kernel (the
  layer that computes the logits);
- `@largest` or `@largest:N`: the N candidates with the most kernel weights (ties: the earlier);
- `@weights>=N`: the candidates with at least N kernel weights;
- `@share:F`: the largest candidates that together hold at least F (0 < F <= 1) of all the
  candidates' kernel weights;
- `!SELECTOR` (in a list): none of what SELECTOR selects.

A list selects the union of its positive selectors (every candidate when it has none) minus what
its `!` selectors select. A positive selector that selects nothing is an error (a typo, or a rule
that does not fit the model); a `!` selector may select nothing.

*Candidates* are the layers a stage can work on (prunable, clusterable, ...); each stage passes
its own. Names keep working in a user's recipe; shipped recipes use rules only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from slimpipe.pipeline.errors import ConfigError

KERNEL_ATTRS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")
FAMILIES = {"conv": ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                     "Conv3DTranspose"),
            "dense": ("Dense",),
            "depthwise": ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")}
KEYWORDS = ("all", "input", "output", "largest", "weights>=", "share", *FAMILIES)
_KEYWORD = re.compile(r"@(all|input|output|conv|dense|depthwise|largest(?::(\d+))?|"
                      r"weights>=(\d+)|share:([0-9.]+))")
SYNTAX = ("a layer name, re:PATTERN, @all, @conv, @dense, @depthwise, @input, @output, @largest, "
          "@largest:N, @weights>=N or @share:F, each optionally preceded by ! to exclude")


@dataclass(frozen=True)
class LayerInfo:
    """What selectors know about one layer of a model."""

    name: str
    cls: str  # the layer's class name (for a tfmot wrapper, the wrapped layer's)
    weights: int  # kernel weights (0: the layer has no kernel)
    index: int  # position in model.layers
    from_input: bool  # the model's input reaches it through kernel-less layers only
    to_output: bool  # it reaches the model's output through kernel-less layers only

    @property
    def family(self) -> str | None:
        return next((f for f, classes in FAMILIES.items() if self.cls in classes), None)


def check_selectors(stage: str, field: str, selectors: Iterable[str]) -> None:
    """ConfigError unless every selector is well formed (names are checked against a model later)."""
    for sel in selectors:
        if not isinstance(sel, str) or not sel.strip("!").strip():
            raise ConfigError(f"stage '{stage}': {field} must hold layer selectors ({SYNTAX}). "
                              f"Received: {sel!r}")
        body = sel[1:] if sel.startswith("!") else sel
        if body.startswith("re:"):
            try:
                re.compile(body[3:])
            except re.error as exc:
                raise ConfigError(f"stage '{stage}': {field} selector {sel!r} is not a valid regular "
                                  f"expression ({exc}): fix the pattern") from None
        elif body.startswith("@"):
            _parse_keyword(stage, field, sel, body)


def selector_tuple(stage: str, field: str, value) -> tuple[str, ...]:
    """A recipe's selector list (a string, a list or a tuple) as a checked tuple."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"stage '{stage}': {field} must be a list of layer selectors ({SYNTAX}). "
                          f"Received: {field}={value!r}")
    check_selectors(stage, field, value)
    return tuple(value)


def selector_pairs(stage: str, field: str, value) -> tuple[tuple[str, object], ...]:
    """A recipe's {selector: value} table as checked (selector, value) pairs, in the recipe's order
    (a later entry wins where two select the same layer). Lists become tuples."""
    if isinstance(value, Mapping):
        value = tuple(value.items())
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str) for e in value)
    if not ok:
        raise ConfigError(f"stage '{stage}': {field} must map layer selectors to values, e.g. "
                          f"{{fc1 = 0.95}} or {{\"@largest\" = 0.95}}. Received: {field}={value!r}")
    check_selectors(stage, field, [k for k, _ in value])
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in value)


def _parse_keyword(stage: str, field: str, sel: str, body: str) -> tuple[str, float | None]:
    found = _KEYWORD.fullmatch(body)
    share = float(found.group(4)) if found and found.group(4) else None
    if not found or (share is not None and not 0 < share <= 1) or (found.group(2) == "0"):
        raise ConfigError(f"stage '{stage}': {field} selector {sel!r} is not one of: {SYNTAX} "
                          "(N a whole number >= 1, F a fraction in (0, 1])")
    word = body[1:].split(":")[0].split(">=")[0]
    number = found.group(2) or found.group(3)
    return (word if word != "weights" else "weights>="), (
        share if share is not None else int(number) if number else None)


def select(selectors: Sequence[str], candidates: Sequence[LayerInfo], *, stage: str = "",
           field: str = "layers") -> list[str]:
    """Names of the candidates the selectors select, in model order."""
    positive = [s for s in selectors if not s.startswith("!")]
    chosen = set()
    for sel in positive:
        hit = _match(sel, candidates, stage, field)
        if not hit:
            raise ConfigError(_nothing_message(sel, candidates, stage, field))
        chosen |= hit
    if not positive:
        chosen = {c.name for c in candidates}
    for sel in selectors:
        if sel.startswith("!"):
            chosen -= _match(sel[1:], candidates, stage, field)
    return [c.name for c in sorted(candidates, key=lambda c: c.index) if c.name in chosen]


def select_mapping(entries: Sequence[tuple[str, object]], candidates: Sequence[LayerInfo], *,
                   stage: str, field: str) -> dict[str, object]:
    """{layer name: value} for (selector, value) entries; a later entry wins where two select
    the same layer. Every selector must select at least one candidate."""
    out: dict[str, object] = {}
    for sel, value in entries:
        for name in select((sel,), candidates, stage=stage, field=field):
            out[name] = value
    return out


def _match(sel: str, candidates: Sequence[LayerInfo], stage: str, field: str) -> set[str]:
    if sel.startswith("re:"):
        pattern = re.compile(sel[3:])
        return {c.name for c in candidates if pattern.fullmatch(c.name)}
    if not sel.startswith("@"):
        return {c.name for c in candidates if c.name == sel}
    word, arg = _parse_keyword(stage, field, sel, sel)
    if word == "all":
        return {c.name for c in candidates}
    if word in FAMILIES:
        return {c.name for c in candidates if c.family == word}
    if word in ("input", "output"):
        return {c.name for c in candidates if (c.from_input if word == "input" else c.to_output)}
    if word == "weights>=":
        return {c.name for c in candidates if c.weights >= arg}
    ranked = sorted(candidates, key=lambda c: (-c.weights, c.index))
    if word == "largest":
        return {c.name for c in ranked[:arg or 1]}
    total, held, out = sum(c.weights for c in candidates), 0, set()
    for c in ranked:  # share: the largest layers until they hold `arg` of the weights
        if total and held >= arg * total - 1e-9:
            break
        out.add(c.name)
        held += c.weights
    return out


def _nothing_message(sel: str, candidates: Sequence[LayerInfo], stage: str, field: str) -> str:
    names = ", ".join(c.name for c in sorted(candidates, key=lambda c: c.index)) or "none"
    fix = ("fix the name (layer names are case-sensitive)" if not sel.startswith(("@", "re:"))
           else "use a rule that fits this model, or remove it")
    return (f"stage '{stage}': {field} selector {sel!r} selects none of the layers this stage can "
            f"work on ({names}): {fix}")


# ---- what a model's layers look like to selectors ------------------------------------------

def kernel_weights(layer) -> int:
    """Kernel weights of a layer (or of the layer a tfmot wrapper holds)."""
    inner = getattr(layer, "layer", None)
    layer = inner if inner is not None and hasattr(inner, "weights") else layer
    total = 0
    for attr in KERNEL_ATTRS:
        weight = getattr(layer, attr, None)
        if weight is not None and hasattr(weight, "shape"):
            total += int(_size(weight.shape))
    return total


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def layer_infos(model) -> list[LayerInfo]:
    """One LayerInfo per layer of a tf_keras model, in model order."""
    layers = list(model.layers)
    weights = {layer.name: kernel_weights(layer) for layer in layers}
    preds = _predecessors(model)
    succs: dict[str, list[str]] = {name: [] for name in preds}
    for name, ins in preds.items():
        for p in ins:
            succs.setdefault(p, []).append(name)
    outputs = set(_output_layers(model))
    from_input = _reach([n for n, ins in preds.items() if not ins], succs, weights)
    to_output = _reach(list(outputs), preds, weights)
    return [LayerInfo(name=layer.name, cls=type(getattr(layer, "layer", layer)).__name__,
                      weights=weights[layer.name], index=i,
                      from_input=layer.name in from_input and weights[layer.name] > 0,
                      to_output=layer.name in to_output and weights[layer.name] > 0)
            for i, layer in enumerate(layers)]


def _reach(start: list[str], edges: Mapping[str, list[str]], weights: Mapping[str, int]) -> set[str]:
    """Layers reached from `start` along `edges`, stopping at (and including) layers with a kernel."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if weights.get(name, 0) == 0:
            todo.extend(edges.get(name, []))
    return seen


def _predecessors(model) -> dict[str, list[str]]:
    config = model.get_config()
    entries = config.get("layers", [])
    if "input_layers" not in config:  # Sequential: a chain
        names = [layer.name for layer in model.layers]
        return {name: names[i - 1:i] for i, name in enumerate(names)}
    preds = {}
    for entry in entries:
        ins = []
        for node in entry.get("inbound_nodes", []):
            for item in node if isinstance(node, list) else []:
                if isinstance(item, list) and item:
                    ins.append(item[0])
        preds[entry["config"]["name"]] = list(dict.fromkeys(ins))
    return preds


def _output_layers(model) -> list[str]:
    config = model.get_config()
    if "output_layers" in config:
        return [entry[0] for entry in config["output_layers"]]
    return [model.layers[-1].name] if model.layers else []


def describe(candidates: Sequence[LayerInfo]) -> str:
    """'conv1 (288), conv2 (18,432), ...': candidates with their kernel weights, for messages."""
    return ", ".join(f"{c.name} ({c.weights:,})" for c in sorted(candidates, key=lambda c: c.index))
