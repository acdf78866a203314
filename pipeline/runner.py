"""The runner: a plain loop over the recipe's steps, with resumable, content-addressed caching.

Each step writes into a temporary folder `OUT/.NN-name.tmp/`, which is renamed to `OUT/NN-name/`
only when the stage has finished, so a folder with a final name is always complete. The folder
holds a manifest (`.slimpipe-stage.json`) with the step's cache key: a hash of the package
version, the stage and its parameters, the data set, the seed and the content hashes of every
artifact the run had made before the step. A later run whose key matches reuses the folder
instead of running the stage, so an unchanged recipe is re-run in seconds, a run killed at any
moment resumes where it stopped, and changing one stage's parameters re-runs that stage and the
ones after it (their inputs changed), nothing before.

>>> ctx = RunContext(data=dataset, out_dir=Path("runs/x"))
>>> source = save_source(ctx, model, spec="cnn", width=1.0, trained=False)
>>> run_recipe(recipe, source, ctx)   # prints "(2 of 5) prune on 'trained'" per step
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from slimpipe.pipeline import __version__
from slimpipe.pipeline.artifacts import Artifact, canonical_json, content_sha256
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.data import hash_array
from slimpipe.pipeline.distribute import StepState
from slimpipe.pipeline.errors import ConfigError, SlimpipeError, StageError
from slimpipe.pipeline.recipe import Recipe
from slimpipe.pipeline.stage import StageResult, stage_config

MANIFEST = ".slimpipe-stage.json"


@dataclass(frozen=True)
class Source:
    """Pseudo-stage that records the model the run starts from."""

    name: ClassVar[str] = "source"
    model: str
    width: float = 1.0
    model_sha256: str | None = None  # of the user's file, when the model is one


def save_source(ctx: RunContext, model, *, spec: str, width: float, trained: bool,
                model_sha256: str | None = None, cache: bool = True) -> Artifact:
    source = Source(model=spec, width=width, model_sha256=model_sha256)
    key = step_key(ctx, "source", source, current=None)
    folder = ctx.out_dir / "00-source"
    reused = _reusable(folder, key) if cache else None
    if reused is not None:
        _apply(ctx, reused)
    else:
        tmp = _tmp_dir(ctx.out_dir, "00-source")
        ctx.stage_dir = tmp
        try:
            art = ctx.save_model(source, model, "source", parent=None, kind="keras",
                                 meta={"trained": trained})
        finally:
            ctx.stage_dir = None
        _commit(ctx, tmp, folder, StageResult([art]), key)
    art = ctx.find("source")
    if trained:
        ctx.baseline = art.name
    return art


def run_recipe(recipe: Recipe, source: Artifact, ctx: RunContext,
               log: Callable[[str], None] = print, cache: bool = True) -> Artifact:
    """Run every step in order; returns the artifact that is current at the end."""
    current, total, after = source, len(recipe), {"source": source}
    for i, step in enumerate(recipe, 1):
        current = after[step.input] if step.input else current
        label = f"{i:02d}-{step.name}"
        dist = ctx.distribution
        if dist is not None and not dist.runs(step.stage):
            log(f"[slimpipe] ({i} of {total}) {step.name}: left to the chief")
            after[step.name] = current
            continue
        started = time.perf_counter()
        key = step_key(ctx, step.name, step.stage, current=current)
        result = _reusable(ctx.out_dir / label, key) if cache else None
        if dist is not None and dist.shared(step.stage):  # every process reuses the step, or none
            result = result if dist.all_agree(result is not None) else None
        reused = result is not None
        if reused:
            _apply(ctx, result)
        else:
            log(f"[slimpipe] ({i} of {total}) {step.name} on '{current.name}'")
            result = _run_step(step, label, current, ctx, key, started)
        outputs = result.artifacts
        seconds = time.perf_counter() - started
        timing = {"name": step.name, "stage": step.stage.name, "folder": label,
                  "seconds": round(seconds, 3), "reused": reused}
        if reused:  # what the step cost when it ran, so the report can say what reuse saved
            timing["ran_seconds"] = _manifest(ctx.out_dir / label).get("seconds")
        ctx.stage_timings.append(timing)
        made = ", ".join(a.name for a in outputs) or "no new artifacts"
        verb = "reused from an earlier run" if reused else f"done in {seconds:.1f} s"
        log(f"[slimpipe] ({i} of {total}) {step.name} {verb}: {made}")
        if step.stage.produces is not None:
            current = next((a for a in outputs if a.kind == step.stage.produces), current)
        after[step.name] = current
    return current


def run_stage(stage, art: Artifact, ctx: RunContext) -> list[Artifact]:
    """Run one stage outside a recipe, into `ctx.stage_dir` (set by the caller), and add its
    result to the run as the runner does (artifacts, notes, measurements, baseline); returns the
    artifacts it made. Nothing is cached.

    >>> ctx.stage_dir = out / "prune"
    >>> [pruning] = run_stage(Prune(final_sparsity=0.8), trained, ctx)
    """
    result = StageResult.of(stage.run(art, ctx))
    _apply(ctx, result)
    return result.artifacts


def _run_step(step, label: str, current: Artifact, ctx: RunContext, key: str,
              started: float) -> StageResult:
    tmp = _tmp_dir(ctx.out_dir, label)
    ctx.stage_dir = tmp
    try:
        with _distributed(ctx, step, ctx.out_dir / label, key) as notes:
            result = StageResult.of(step.stage.run(current, ctx))
            for note in notes:
                result.note(note)
    except SlimpipeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageError(f"stage '{step.name}' failed on artifact {current.id[:8]} "
                         f"('{current.name}'): {type(exc).__name__}: {exc}") from exc
    finally:
        ctx.stage_dir = None
    taken = {a.name for a in ctx.artifacts}
    clash = [a.name for a in result.artifacts if a.name in taken]
    if clash:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"step '{step.name}' made {', '.join(map(repr, clash))}, a name an earlier step "
                          "already gave an artifact, so the report could not tell the two apart. Fix: "
                          "give the step options that differ in its output (e.g. sparse, per_channel, "
                          "mode) or remove one of the two steps")
    return _commit(ctx, tmp, ctx.out_dir / label, result, key, seconds=time.perf_counter() - started)


# -- cache keys and manifests -----------------------------------------------------------------
def data_fingerprint(data) -> str:
    h = hashlib.sha256(data.name.encode())
    for arr in (data.x_train, data.y_train, data.x_test, data.y_test):
        hash_array(h, arr)
    return h.hexdigest()


def step_key(ctx: RunContext, step: str, stage: Any, *, current: Artifact | None) -> str:
    if ctx.data_sha256 is None:
        ctx.data_sha256 = data_fingerprint(ctx.data)
    key = {"version": __version__, "step": step, "stage": stage.name,
           "config": stage_config(stage), "data": ctx.data_sha256, "seed": ctx.seed,
           "current": current.name if current else None,
           "inputs": [[a.name, a.sha256] for a in ctx.artifacts]}
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()


def _commit(ctx, tmp: Path, final: Path, result: StageResult, key: str,
            seconds: float | None = None) -> StageResult:
    """Write the manifest, rename the finished folder into place, add the result to the run."""
    tmp.mkdir(parents=True, exist_ok=True)
    moved = [dataclasses.replace(a, path=final / Path(a.path).relative_to(tmp))
             if Path(a.path).is_relative_to(tmp) else a for a in result.artifacts]
    result = dataclasses.replace(result, artifacts=moved)
    manifest = {"key": key, "outputs": [a.record() | {"path": str(a.path.relative_to(final))} for a in moved],
                "baseline": result.baseline, "notes": result.notes,
                "measurements": json.loads(canonical_json(result.measurements)),
                "seconds": None if seconds is None else round(seconds, 3)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _apply(ctx, result)
    return result


def _apply(ctx: RunContext, result: StageResult) -> None:
    """Add a step's result to the run: its artifacts, measurements, notes and baseline."""
    ctx.artifacts.extend(result.artifacts)
    ctx.measurements.update(result.measurements)
    for note in result.notes:
        ctx.note(note)
    if result.baseline:
        ctx.baseline = result.baseline


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _reusable(folder: Path, key: str) -> StageResult | None:
    """The result of a finished folder whose manifest has `key` and whose files are intact, or
    None when it cannot be reused (the caller adds it to the run with `_apply`)."""
    manifest = _manifest(folder)
    if not manifest or manifest.get("key") != key:
        return None
    outputs = [Artifact.from_record(r, folder) for r in manifest["outputs"]]
    if any(not a.path.exists() or content_sha256(a.path) != a.sha256 for a in outputs):
        return None
    return StageResult(outputs, list(manifest.get("notes", [])), dict(manifest.get("measurements", {})),
                       manifest.get("baseline"))


@contextlib.contextmanager
def _distributed(ctx: RunContext, step, folder: Path, key: str):
    """Under --distribute, a training stage runs inside the strategy's scope, with its backups
    in `backup_folder`; yields the list of notes its fits leave for the report."""
    dist = ctx.distribution
    if dist is None or not dist.trains(step.stage):
        yield []
        return
    dist.step = StepState(step.name, backup_dir=backup_folder(folder, key))
    try:
        with dist.scope(step.stage):
            yield dist.step.notes
    finally:
        dist.step = None


def backup_folder(folder: Path, key: str) -> Path:
    """`OUT/NN-step/backup/`: where a training step's fits keep tf_keras BackupAndRestore
    checkpoints. The step itself writes into `OUT/.NN-step.tmp/`, which a restart clears; this
    folder survives a restart (a killed run resumes from the last finished epoch) and goes
    when the finished step replaces `OUT/NN-step/`. A backup made under another cache key (the
    recipe or the inputs changed) is removed, never restored."""
    backup = folder / "backup"
    stamp = backup / "KEY"
    if backup.exists() and not (stamp.is_file() and stamp.read_text() == key):
        shutil.rmtree(backup)
    backup.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return backup


def _tmp_dir(out_dir: Path, label: str) -> Path:
    tmp = out_dir / f".{label}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp
