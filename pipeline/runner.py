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
from slimpipe.pipeline.errors import ConfigError, SlimpipeError, StageError
from slimpipe.pipeline.recipe import Recipe
from slimpipe.pipeline.stage import stage_config

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
    if not (cache and _reuse(ctx, folder, key) is not None):
        tmp = _tmp_dir(ctx.out_dir, "00-source")
        ctx.stage_dir = tmp
        try:
            art = ctx.save_model(source, model, "source", parent=None, kind="keras",
                                 meta={"trained": trained})
        finally:
            ctx.stage_dir = None
        _commit(ctx, tmp, folder, [art], key, _Delta.start(ctx))
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
        started = time.perf_counter()
        key = step_key(ctx, step.name, step.stage, current=current)
        outputs = _reuse(ctx, ctx.out_dir / label, key) if cache else None
        reused = outputs is not None
        if not reused:
            log(f"[slimpipe] ({i} of {total}) {step.name} on '{current.name}'")
            outputs = _run_step(step, label, current, ctx, key, started)
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


def _run_step(step, label: str, current: Artifact, ctx: RunContext, key: str,
              started: float) -> list[Artifact]:
    tmp, delta = _tmp_dir(ctx.out_dir, label), _Delta.start(ctx)
    ctx.stage_dir = tmp
    try:
        outputs = step.stage.run(current, ctx)
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
    clash = [a.name for a in outputs if a.name in taken]
    if clash:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"step '{step.name}' made {', '.join(map(repr, clash))}, a name an earlier step "
                          "already gave an artifact, so the report could not tell the two apart. Fix: "
                          "give the step options that differ in its output (e.g. sparse, per_channel, "
                          "mode) or remove one of the two steps")
    return _commit(ctx, tmp, ctx.out_dir / label, outputs, key, delta,
                   seconds=time.perf_counter() - started)


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


@dataclass
class _Delta:
    """What a stage changed in the context besides its artifacts (to replay on reuse)."""

    baseline: str | None
    measured: dict[str, str]
    notes: int

    @classmethod
    def start(cls, ctx: RunContext) -> "_Delta":
        return cls(ctx.baseline, {k: canonical_json(v) for k, v in ctx.measurements.items()},
                   len(ctx.notes))

    def record(self, ctx: RunContext) -> dict[str, Any]:
        changed = {k: v for k, v in ctx.measurements.items()
                   if self.measured.get(k) != canonical_json(v)}
        return {"baseline": ctx.baseline if ctx.baseline != self.baseline else None,
                "measurements": json.loads(canonical_json(changed)),
                "notes": ctx.notes[self.notes:]}


def _commit(ctx, tmp: Path, final: Path, outputs: list[Artifact], key: str,
            delta: _Delta, seconds: float | None = None) -> list[Artifact]:
    """Write the manifest, rename the finished folder into place, point artifacts at it."""
    tmp.mkdir(parents=True, exist_ok=True)
    moved = [dataclasses.replace(a, path=final / Path(a.path).relative_to(tmp))
             if Path(a.path).is_relative_to(tmp) else a for a in outputs]
    manifest = {"key": key, "outputs": [a.record() | {"path": str(a.path.relative_to(final))}
                                        for a in moved], **delta.record(ctx),
                "seconds": None if seconds is None else round(seconds, 3)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    ctx.artifacts.extend(moved)
    return moved


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _reuse(ctx: RunContext, folder: Path, key: str) -> list[Artifact] | None:
    """Adopt a finished folder whose manifest has `key` and whose files are intact; returns
    its artifacts, or None when it cannot be reused."""
    manifest = _manifest(folder)
    if not manifest or manifest.get("key") != key:
        return None
    outputs = [Artifact.from_record(r, folder) for r in manifest["outputs"]]
    if any(not a.path.exists() or content_sha256(a.path) != a.sha256 for a in outputs):
        return None
    ctx.artifacts.extend(outputs)
    if manifest.get("baseline"):
        ctx.baseline = manifest["baseline"]
    ctx.measurements.update(manifest.get("measurements", {}))
    for note in manifest.get("notes", []):
        ctx.note(note)
    return outputs


def _tmp_dir(out_dir: Path, label: str) -> Path:
    tmp = out_dir / f".{label}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp
