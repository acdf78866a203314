"""Which pixel range a model expects, and a cheap check that it gets it.

Models built as the Keras image tutorials build them start with a `Rescaling(1/255)` (or a
`Normalization` adapted on raw images): they expect pixels 0-255, not the 0-1 that slimpipe
feeds by default. `detect_input_range` finds such a layer where the input reaches it through
weightless layers only (augmentation, resizing, cropping); `check_baseline` then measures a
trained model on a few hundred test images and stops the run when it scores at chance,
naming the range that works if one does.

>>> detect_input_range(model)
('0-255', "the model's input goes to Rescaling layer 'rescaling' (x * 0.003922 + 0)")
>>> check_baseline(model, data, examples=300)
{'accuracy': 0.91, 'chance': 0.1, 'examples': 300, 'input_range': '0-255'}
"""
from __future__ import annotations

import math

import numpy as np

from slimpipe.pipeline.data.dataset import AS_STORED, Dataset, rescale, stratified_subset
from slimpipe.pipeline.errors import ConfigError

PREPROCESSING = ("Rescaling", "Normalization")
BASELINE_EXAMPLES = 300


def _leaf_layers(model):
    """Layers in order, with nested models (e.g. a Sequential of augmentation layers) opened."""
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ not in PREPROCESSING:
            yield from _leaf_layers(layer)
        else:
            yield layer


def detect_input_range(model) -> tuple[str | None, str]:
    """("0-255" or "0-1", why) when the input reaches a Rescaling or Normalization layer
    through weightless layers only; (None, why not) otherwise."""
    for layer in _leaf_layers(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            scale, offset = np.ravel(layer.scale).astype(float), np.ravel(layer.offset).astype(float)
            # x/255 or x/127.5 - 1 maps 0-255 to about unit range; a scale near 1 expects 0-1 input.
            expected = "0-255" if np.abs(scale).max() < 0.1 else "0-1"
            return expected, (f"the model's input goes to Rescaling layer '{layer.name}' "
                              f"(x * {_fmt(scale)} + {_fmt(offset)})")
        if kind == "Normalization":
            mean, variance = np.ravel(layer.mean), np.ravel(layer.variance)
            expected = "0-255" if max(np.abs(mean).max(), math.sqrt(variance.max())) > 2.0 else "0-1"
            return expected, (f"the model's input goes to Normalization layer '{layer.name}' "
                              f"(mean {_fmt(mean)}, std {_fmt(np.sqrt(variance))})")
        if layer.weights and kind != "InputLayer":
            return None, f"no Rescaling or Normalization before the first layer with weights ('{layer.name}')"
    return None, "no Rescaling or Normalization layer at the input"


def _fmt(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:.4g}" for v in np.ravel(values)[:3])
    return shown if np.size(values) == 1 else f"[{shown}{', ...' if np.size(values) > 3 else ''}]"


def choose_input_range(model, requested: str) -> tuple[str, str]:
    """(range, why): `requested` unless it is "auto"; then the range detected in a model file,
    else "0-1" (`model` None: a built-in model, built without preprocessing layers)."""
    if requested != "auto":
        return requested, f"--input-range {requested}"
    if model is None:
        return "0-1", "built-in models take 0-1"
    detected, why = detect_input_range(model)
    return (detected, f"detected: {why}") if detected else ("0-1", f"the default: {why}")


def check_baseline(model, data: Dataset, *, examples: int = BASELINE_EXAMPLES, seed: int = 0,
                   source: str = "the model") -> dict:
    """Top-1 accuracy of a trained `model` on up to `examples` test images (class-balanced).

    At chance level, a ConfigError when the other input range does better (the model expects the
    other range: a run would compress it on inputs it cannot read); else the result carries a
    `warning` for the report and the log (an untrained model, or classes in another order), and
    the run goes on: a user may hand over an architecture for the train stage to train
    (`if_trained = "continue"`)."""
    index = stratified_subset(data.y_test, min(examples, len(data.y_test)), seed=seed)
    x, y = np.asarray(data.x_test[index], dtype=np.float32), data.y_test[index]
    chance = float(np.bincount(y).max() / len(y))
    # Three standard deviations above chance: a model that learned anything clears it.
    threshold = chance + 3 * math.sqrt(chance * (1 - chance) / len(y))
    accuracy = _accuracy(model, x, y)
    result = {"accuracy": round(accuracy, 4), "chance": round(chance, 4), "examples": int(len(y)),
              "input_range": data.input_range}
    if accuracy > threshold:
        return result
    said = (f"{source} scores {accuracy:.0%} on {len(y)} test images of '{data.name}' with input "
            f"range {data.input_range} ({data.details.get('input_range_source', 'default')}), where "
            f"chance is {chance:.0%}")
    if data.input_range == AS_STORED:
        return {**result, "warning": f"{said}: check that the model is trained for these classes, in "
                                     "this order, and that the stored images are scaled as it was trained"}
    other = "0-1" if data.input_range == "0-255" else "0-255"
    other_accuracy = _accuracy(model, rescale(x, other), y)
    if other_accuracy > threshold:
        raise ConfigError(f"{said}, but {other_accuracy:.0%} with input range {other}: the model expects "
                          f"{other} pixels; pass --input-range {other}")
    return {**result, "warning": f"{said}, and {other_accuracy:.0%} with input range {other}: it looks "
                                 "untrained, or its classes are not the data set's in the same order (class "
                                 "folders sorted by name); the train stage keeps a model file as the baseline "
                                 "unless if_trained = \"continue\""}


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))
