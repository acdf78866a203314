"""A run's model and data, loaded so that they fit each other.

A model file is loaded first when the data set is an image folder, so that the images are
decoded at the model's input size and channels. The data then gets the pixel range the model
expects (`--input-range`, or detected from a Rescaling/Normalization layer at its input), and a
trained model is checked on a few hundred test images before anything runs.

>>> inputs = load_inputs("my_model.keras", "dir:photos", RunOptions(seed=0))
>>> inputs.data.input_range, inputs.trained
('0-255', True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slimpipe.pipeline.data import DEFAULT_IMAGE_SIZE, Dataset, load_dataset
from slimpipe.pipeline.data.input_range import check_baseline, choose_input_range
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.models import MODELS, check_fit, load_user_model, resolve_model

INPUT_RANGE_CHOICES = ("auto", "0-1", "0-255")


@dataclass(frozen=True)
class RunOptions:
    """How to read the data and build the model (the CLI's options of the same names)."""

    seed: int = 0
    width: float = 1.0
    limit: int | None = None
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    test_split: float | None = None
    skip_bad_images: bool = False
    input_range: str = "auto"
    allow_unsafe_model: bool = False
    custom: Any = None  # the user's custom layer classes (--custom-objects), see pipeline.keras3.custom
    log: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Inputs:
    model: Any
    trained: bool
    data: Dataset
    notes: list[str] = field(default_factory=list)  # for the report
    loaded: dict = field(default_factory=dict)  # {"keras3": what translating a Keras 3 file did}


def load_inputs(model_spec: str, dataset_spec: str, options: RunOptions) -> Inputs:
    """Model and data for a run, checked against each other (ConfigError on any mismatch)."""
    if options.input_range not in INPUT_RANGE_CHOICES:
        raise ConfigError(f"--input-range must be one of {', '.join(INPUT_RANGE_CHOICES)}. Received: "
                          f"{options.input_range!r}")
    is_file = model_spec not in MODELS and bool(model_spec) and Path(model_spec).expanduser().exists()
    loaded: dict = {}
    custom = {} if options.custom is None else {"custom": options.custom}
    user_model = load_user_model(model_spec, allow_unsafe=options.allow_unsafe_model, record=loaded,
                                 **custom) if is_file else None
    data = load_dataset(dataset_spec, limit=options.limit, data_dir=options.data_dir, seed=options.seed,
                        **_image_options(dataset_spec, user_model, options))
    input_range, why = choose_input_range(user_model, options.input_range)
    data = data.with_input_range(input_range, why)
    if user_model is not None:
        model, trained = user_model, True
    else:
        model, trained = resolve_model(model_spec, input_shape=data.input_shape,
                                       num_classes=data.num_classes, width=options.width,
                                       seed=options.seed, allow_unsafe=options.allow_unsafe_model)
    check_fit(model, data)
    notes = []
    if trained or data.input_range != "0-1":
        notes.append(f"Data: '{data.name}' is fed to the model in the range {data.input_range} ({why}).")
    if trained:
        result = check_baseline(model, data, seed=options.seed, source=f"model '{model_spec}'")
        data = data.with_details(baseline_check=result)
        if "warning" in result:
            notes.append(f"Baseline check: {result['warning']}.")
            if options.log:
                options.log(f"[slimpipe] warning: {result['warning']}")
    skipped = data.details.get("skipped_images")
    if skipped:
        notes.append(f"Data: {skipped} file{'s' if skipped != 1 else ''} of '{data.name}' skipped as not "
                     f"decodable images (--skip-bad-images), e.g. {data.details['skipped'][0]}.")
    return Inputs(model, trained, data, notes, loaded)


def _image_options(dataset_spec: str, user_model, options: RunOptions) -> dict[str, Any]:
    """Size and channels for an image folder: a model file's input, else --image-size (or the
    default) with channels from the images. Other data sets take --image-size alone."""
    common = {"test_split": options.test_split, "skip_bad_images": options.skip_bad_images}
    if not str(dataset_spec).strip().startswith("dir:"):
        return {**common, "image_size": options.image_size}
    if user_model is None:
        return {**common, "image_size": options.image_size or DEFAULT_IMAGE_SIZE, "channels": None,
                "log": options.log}
    height, width, channels = tuple(user_model.input_shape[1:])
    if options.image_size is not None and tuple(options.image_size) != (height, width):
        raise ConfigError(f"--image-size {options.image_size[0]}x{options.image_size[1]} but the model "
                          f"takes {height}x{width} images: drop --image-size (images are resized to "
                          "the model's input)")
    return {**common, "image_size": (height, width), "channels": channels, "log": options.log}
