"""The run context: what every stage of one run shares.

It holds the data set, every artifact made so far (in order), the measurements the benchmark
stage took, notes for the report, an in-memory cache of Keras models so that a stage does
not reload the file its predecessor just wrote, and a memo for other per-run results.
Stages read it; what a stage adds to the run (artifacts, notes, measurements, the baseline)
it returns as a `pipeline.stage.StageResult`, which the runner adds here.
When the run's model came from Keras 3, `keras3` holds the writer that saves every Keras
artifact as a Keras 3 `.keras` file too (see `pipeline.keras3.out`).
Under --distribute, `distribution` is the run's `pipeline.distribute.Distribution`: a model made
inside the strategy's scope (a training stage's) holds distributed variables and is never kept
in the model cache (the processes of a multi-worker run must create the same variables in the
same order), and what a training step records about its replicas goes into its artifacts' meta
under "distribute".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimpipe.pipeline.artifacts import Artifact, make_artifact
from slimpipe.pipeline.distribute import in_strategy_scope
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.out import Keras3Writer
from slimpipe.pipeline.kerasio import load_keras, save_keras
from slimpipe.pipeline.stage import stage_config


@dataclass
class RunContext:
    data: Any  # pipeline.data.Dataset
    out_dir: Path
    model_name: str = "model"
    seed: int = 0
    artifacts: list[Artifact] = field(default_factory=list)
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stage_dir: Path | None = None  # where the running stage writes; set by the runner
    baseline: str | None = None  # name of the dense Keras baseline artifact
    stage_timings: list[dict[str, Any]] = field(default_factory=list)
    data_sha256: str | None = None  # fingerprint of the data set, part of every cache key
    keras3: Keras3Writer | None = None  # set when the source model was saved by Keras 3
    distribution: Any = None  # pipeline.distribute.Distribution under --distribute
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    # -- artifacts -------------------------------------------------------------------------
    def find(self, name: str) -> Artifact:
        for art in self.artifacts:
            if art.name == name:
                return art
        known = ", ".join(a.name for a in self.artifacts) or "none yet"
        raise ConfigError(f"no artifact named {name!r}; artifacts so far: {known}")

    def keras_model(self, art: Artifact):
        """The model an artifact holds. Callers must not mutate it: clone it first."""
        if not art.is_keras:
            raise TypeError(f"artifact {art.name!r} is {art.format}, not a Keras model")
        if in_strategy_scope():
            return load_keras(art.path)  # its own distributed copy, created in step on every process
        if art.id not in self._models:
            self._models[art.id] = load_keras(art.path)
        return self._models[art.id]

    def memo(self, key, compute):
        """compute() once per run for `key` (e.g. a teacher's logits on the training set, which
        every distilled stage of the run needs), its result reused after that. Callers must
        not mutate the result."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def save_model(self, stage, model, name: str, *, parent: Artifact | None, kind: str,
                   meta: dict[str, Any] | None = None) -> Artifact:
        """Write `model` into the stage's folder and return its artifact record (for a run
        from Keras 3, with a Keras 3 copy `<name>.keras` beside it, recorded in meta["keras3"])."""
        path = self._stage_path(f"{name}.h5")
        save_keras(model, path)
        if self.keras3 is not None:
            meta = {**(meta or {}), "keras3": self.keras3.write(model, path, kind=kind)}
        art = make_artifact(name, path, fmt="keras", kind=kind, stage=stage.name,
                            config=stage_config(stage), parent=parent, meta=self._distributed(meta))
        if not in_strategy_scope():  # later stages load a distributed model's file afresh
            self._models[art.id] = model
        return art

    def add_file(self, stage, path: Path, name: str, *, fmt: str, parent: Artifact | None,
                 meta: dict[str, Any] | None = None) -> Artifact:
        """Record a file the stage has completely written into its folder."""
        return make_artifact(name, path, fmt=fmt, kind=fmt, stage=stage.name,
                             config=stage_config(stage), parent=parent, meta=self._distributed(meta))

    def _distributed(self, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        """`meta` with what the running training step records about its replicas, if any."""
        step = getattr(self.distribution, "step", None)
        if step is None:
            return meta
        return {**(meta or {}), "distribute": {**self.distribution.record(), **step.meta}}

    def stage_path(self, filename: str) -> Path:
        return self._stage_path(filename)

    def _stage_path(self, filename: str) -> Path:
        if self.stage_dir is None:
            raise RuntimeError("no stage is running: stage_dir is unset")
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        return self.stage_dir / filename

    def measurable(self) -> list[Artifact]:
        """Artifacts worth exporting and measuring: all but an untrained source model."""
        return [a for a in self.artifacts if a.stage != "source" or a.name == self.baseline]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
