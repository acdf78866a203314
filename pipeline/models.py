"""Model zoo (built from scratch, outputs are logits) and safe loading of user model files.

>>> model = build_model("cnn", (28, 28, 1), 10)
>>> model, trained = resolve_model("my_model.h5", input_shape=(28, 28, 1), num_classes=10)
"""
from __future__ import annotations

import difflib
import re
import zipfile
from pathlib import Path

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.custom import NONE, CustomObjects
from slimpipe.pipeline.keras3.detect import SAVEDMODEL_HINT, keras3_version, read_config
from slimpipe.pipeline.keras3.translate import load_keras3_file
from slimpipe.pipeline.kerasio import tfmot_scope

MODELS: dict[str, str] = {
    "cnn": "3-conv CNN from the TF pruning tutorials (~131k params at 28x28x1); fast, >=92% on Fashion-MNIST",
    "vgg16": "CIFAR-style VGG16 with batch norm (13 conv layers, ~15M params at width 1)",
    "mobilenet_v2": "MobileNetV2 as in Keras (untrained; width = alpha), stride-2 convs padded 1 on each side "
                    "so XNNPACK can run it sparse; small inputs are resized to 32x32 RGB",
}

_FORMATS = "a .keras file, a .h5/.hdf5 file or a SavedModel directory saved by Keras"
_ACCEPTED = f"slimpipe takes {_FORMATS}"


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def build_model(name: str, input_shape: tuple, num_classes: int, *, width: float = 1.0,
                seed: int = 0):
    """A fresh, untrained model; its last layer is a Dense without activation (logits)."""
    import tf_keras as keras

    if name not in MODELS:
        raise ConfigError(_unknown_model_message(name))
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (height, width, channels), got {input_shape}: "
                          "use a data set of images")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(f"num_classes must be a whole number >= 2, got {num_classes!r}: "
                          "use a data set with at least two classes")
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width!r}: pass e.g. width=0.5 for half the filters")
    keras.utils.set_random_seed(seed)
    builder = {"cnn": _cnn, "vgg16": _vgg16, "mobilenet_v2": _mobilenet_v2}[name]
    return builder(keras, input_shape, int(num_classes), width)


def _cnn(keras, input_shape, num_classes, width):
    # Valid convs and two pools shrink H, W by: -2, /2, -2, /2, -2; below 18 nothing is left.
    if min(input_shape[:2]) < 18:
        raise ConfigError(f"cnn needs images of at least 18x18, got {input_shape[0]}x{input_shape[1]}: "
                          "resize the data (image_size=(28, 28)) or use vgg16")
    layers = keras.layers
    return keras.Sequential([
        layers.Input(input_shape, name="image"),
        layers.Conv2D(_scaled(32, width), 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(_scaled(64, width), 3, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Conv2D(_scaled(64, width), 3, activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        # Without it the net overfits Fashion-MNIST from about epoch 6 on.
        layers.Dropout(0.25, name="dropout"),
        layers.Dense(_scaled(128, width), activation="relu", name="fc1"),
        layers.Dense(num_classes, name="logits"),
    ], name="cnn")


_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg16(keras, input_shape, num_classes, width):
    layers = keras.layers
    inputs = layers.Input(input_shape, name="image")
    x = inputs
    for b, filters in enumerate(_VGG16_BLOCKS, start=1):
        for i, f in enumerate(filters, start=1):
            # No bias: the batch norm's beta that follows does the same job.
            x = layers.Conv2D(_scaled(f, width), 3, padding="same", use_bias=False,
                              name=f"block{b}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{i}")(x)
            x = layers.ReLU(name=f"block{b}_relu{i}")(x)
        # "same" pooling so odd sizes keep going: 28 -> 14 -> 7 -> 4 -> 2 -> 1.
        x = layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(_scaled(512, width), activation="relu", name="fc1")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg16")


# Keras's MobileNetV2 uses batch-norm momentum 0.999: its moving variance keeps 0.999^n of its
# initial 1.0 after n steps, 21% after 1,565 steps, and a 5-epoch run on 20,000 images scored
# 10% (chance) in inference mode at 83% training accuracy. 0.99 settles within a few hundred steps.
BN_MOMENTUM = 0.99


def _mobilenet_v2(keras, input_shape, num_classes, width):
    layers = keras.layers
    h, w, c = input_shape
    inputs = layers.Input(input_shape, name="image")
    x = inputs
    # MobileNetV2 needs >= 32x32 RGB; plain layers (no Lambda) keep the model safe to reload.
    if h < 32 or w < 32:
        h, w = max(h, 32), max(w, 32)
        x = layers.Resizing(h, w, name="resize")(x)
    if c == 1:
        x = layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])
    elif c != 3:
        raise ConfigError(f"mobilenet_v2 takes 1- or 3-channel images, got {c} channels: "
                          "use cnn or vgg16 for this data")
    # Keras's own MobileNetV2, layer for layer and by the same names, except that its stride-2
    # convs are padded 1 on every side (explicit ZeroPadding2D, then VALID) where Keras pads
    # (0, 1): same shapes and weights, but only this form is a graph XNNPACK's sparse inference
    # (and tfmot's PruneForLatencyOnXNNPack) accepts; and batch-norm momentum (BN_MOMENTUM).
    # One flat model: tfmot cannot wrap nested ones.
    L = layers
    x = L.ZeroPadding2D(1, name="Conv1_pad")(x)
    x = L.Conv2D(_divisible(32 * width), 3, strides=2, padding="valid", use_bias=False, name="Conv1")(x)
    x = L.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name="bn_Conv1")(x)
    x = L.ReLU(6.0, name="Conv1_relu")(x)
    for block, (filters, stride, expansion) in enumerate(_MOBILENET_V2_BLOCKS):
        x = _inverted_residual(L, x, _divisible(filters * width), stride, expansion, block)
    x = L.Conv2D(_divisible(1280 * width) if width > 1.0 else 1280, 1, use_bias=False, name="Conv_1")(x)
    x = L.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name="Conv_1_bn")(x)
    x = L.ReLU(6.0, name="out_relu")(x)
    x = L.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inputs, L.Dense(num_classes, name="predictions")(x), name="mobilenet_v2")


# (output filters at width 1, stride, expansion) of blocks 0..16, as in Keras's MobileNetV2.
_MOBILENET_V2_BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
                        (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6),
                        (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6))


def _divisible(v: float, divisor: int = 8) -> int:
    """Keras's _make_divisible: the nearest multiple of 8, never 10% below v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _inverted_residual(L, inputs, filters: int, stride: int, expansion: int, block: int):
    channels = int(inputs.shape[-1])
    prefix = f"block_{block}_" if block else "expanded_conv_"
    x = inputs
    if block:
        x = L.Conv2D(expansion * channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = L.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "expand_BN")(x)
        x = L.ReLU(6.0, name=prefix + "expand_relu")(x)
    if stride == 2:
        x = L.ZeroPadding2D(1, name=prefix + "pad")(x)
    x = L.DepthwiseConv2D(3, strides=stride, use_bias=False, padding="same" if stride == 1 else "valid",
                          name=prefix + "depthwise")(x)
    x = L.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "depthwise_BN")(x)
    x = L.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = L.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = L.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "project_BN")(x)
    if channels == filters and stride == 1:
        x = L.Add(name=prefix + "add")([inputs, x])
    return x


def _unknown_model_message(spec: str) -> str:
    close = difflib.get_close_matches(spec, list(MODELS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"unknown model '{spec}': {hint}expected one of {', '.join(MODELS)} or the path of an "
            f"existing model file ({_ACCEPTED})")


# ---- user model files ----------------------------------------------------------------------

def _sniff(path: Path) -> str:
    """What kind of file this is: 'keras', 'h5', 'savedmodel', or a ConfigError saying what it is."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            if (path / "keras_metadata.pb").is_file():
                return "savedmodel"
            raise ConfigError(f"'{path}' is a TensorFlow SavedModel without Keras metadata "
                              f"(keras_metadata.pb): {SAVEDMODEL_HINT}")
        raise ConfigError(f"'{path}' is a folder without saved_model.pb, not a SavedModel: {_ACCEPTED}")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                if "config.json" in zf.namelist():
                    return "keras"
        except zipfile.BadZipFile:
            pass
        looks = "a zip archive without config.json"
    elif head[4:8] == b"TFL3":
        looks = "a TFLite flatbuffer"
    elif path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"onnx" in _read_start(path)):
        looks = "an ONNX model"
    elif path.suffix.lower() == ".pb":
        looks = "a bare protobuf (a SavedModel is the folder holding saved_model.pb)"
    elif not head:
        looks = "an empty file"
    elif _is_text(head):
        looks = "a text file"
    else:
        looks = "an unrecognized binary file"
    raise ConfigError(f"'{path}' looks like {looks}, not a Keras model: {_ACCEPTED}")


def _read_start(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n).lower()


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _lambda_layers(path: Path, kind: str) -> list[str]:
    """Names of Lambda layers, read from the stored config WITHOUT deserializing any layer."""
    if kind == "savedmodel":
        # keras_metadata.pb is a protobuf of JSON strings; an exact "Lambda" class name (not
        # TFOpLambda, which names a TF op, not Python code) marks a pickled Python function.
        meta = (path / "keras_metadata.pb").read_bytes()
        if b'"class_name": "Lambda"' not in meta:
            return []
        names = re.findall(rb'"class_name": "Lambda", "config": \{"name": "([^"]+)"', meta)
        return [n.decode("utf-8", "replace") for n in names] or ["?"]
    config = read_config(path, kind)
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config") or {}
                found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def load_user_model(path: str | Path, *, allow_unsafe: bool = False, custom: CustomObjects = NONE,
                    record: dict | None = None):
    """Load a user's .keras / .h5 / SavedModel without running code stored in it.

    Lambda layers hold pickled Python code that runs on load; they are refused unless
    `allow_unsafe`. The check reads the stored config before Keras touches the file. A file
    saved by Keras 3 is translated into an equivalent tf_keras model (`pipeline.keras3`);
    `record`, when given, receives {"keras3": what the translation did} then. `custom` holds
    the user's layer classes (--custom-objects).
    """
    import tf_keras as keras

    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"model file '{path}' not found: pass the path of {_FORMATS}")
    kind = _sniff(path)
    if kind == "keras" and path.suffix != ".keras":
        raise ConfigError(f"'{path}' is a Keras v3 zip archive but is named '{path.name}': "
                          "rename it to end in .keras")
    version = keras3_version(path, kind)
    if version:
        model, info = load_keras3_file(path, kind, version=version, allow_unsafe=allow_unsafe, custom=custom)
        if record is not None:
            record["keras3"] = info
        _check_image_input(model, path)
        return model
    try:
        lambdas = _lambda_layers(path, kind)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"could not read the model config in '{path}' ({_first_line(exc)}): "
                          f"re-save the model; {_ACCEPTED}") from None
    if lambdas and not allow_unsafe:
        raise ConfigError(f"model contains Lambda layer '{lambdas[0]}', whose Python code runs when "
                          "loaded; pass --allow-unsafe-model if you trust the file")
    kwargs = {"safe_mode": not allow_unsafe} if kind == "keras" else {}
    try:
        with tfmot_scope():
            model = keras.models.load_model(path, compile=False, **kwargs)
    except Exception as exc:
        raise ConfigError(f"could not load Keras model '{path}' ({_first_line(exc)}): {_ACCEPTED}; "
                          "custom layers need --custom-objects FILE.py") from None
    _check_image_input(model, path)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_image_input(model, where) -> None:
    inputs = getattr(model, "inputs", None) or []
    shapes = [tuple(i.shape) for i in inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4 or None in shapes[0][1:]:
        raise ConfigError(f"model '{where}' has inputs {shapes or 'unknown'}, expected one image input "
                          "(batch, height, width, channels) with fixed sizes: export a single-input "
                          "image classifier")


def resolve_model(spec: str, *, input_shape, num_classes, width: float = 1.0, seed: int = 0,
                  allow_unsafe: bool = False, custom: CustomObjects = NONE, record: dict | None = None):
    """(model, trained): a zoo name builds an untrained model; a path loads a (trained) file
    (see `load_user_model` for `custom` and `record`)."""
    spec = str(spec)
    if spec in MODELS:
        return build_model(spec, input_shape, num_classes, width=width, seed=seed), False
    if spec and Path(spec).expanduser().exists():
        return load_user_model(spec, allow_unsafe=allow_unsafe, custom=custom, record=record), True
    raise ConfigError(_unknown_model_message(spec))


def check_fit(model, dataset) -> None:
    """ConfigError unless the model takes the data set's images and predicts its classes."""
    model_in = tuple(model.input_shape[1:])
    if model_in != tuple(dataset.input_shape):
        raise ConfigError(
            f"model takes inputs of shape {model_in} but data set '{dataset.name}' has "
            f"{tuple(dataset.input_shape)}: use a data set with {model_in} images, pass "
            f"image_size to resize, or build the model for {tuple(dataset.input_shape)}")
    out = tuple(model.output_shape)
    if len(out) != 2 or out[-1] != dataset.num_classes:
        raise ConfigError(
            f"model outputs shape {out[1:]} but data set '{dataset.name}' has {dataset.num_classes} "
            f"classes: use a data set with {out[-1]} classes, or rebuild the model's last layer "
            f"with {dataset.num_classes} units")


def output_is_probabilities(model) -> bool:
    """True when the model ends in a softmax (a Softmax layer, or activation="softmax" on the last
    layer, also inside tfmot's pruning/clustering/QAT wrappers): its outputs are probabilities and
    a loss must not apply a softmax again. False for logits."""
    layer = model.layers[-1]
    while getattr(layer, "layer", None) is not None and hasattr(layer.layer, "get_config"):
        layer = layer.layer  # tfmot wrappers keep the original layer here
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    activation = getattr(activation, "activation", activation)  # tfmot QuantizeAwareActivation
    return getattr(activation, "__name__", None) == "softmax" or activation == "softmax"
