"""The runner: a plain loop over the recipe's steps.

Each step writes into a temporary folder `OUT/.NN-name.tmp/`, which is renamed to `OUT/NN-name/`
only when the stage has finished, so a folder with a final name is always complete.

>>> ctx = RunContext(data=dataset, out_dir=Path("runs/x"))
>>> source = save_source(ctx, model, spec="cnn", trained=False)
>>> run_recipe(recipe, source, ctx)   # prints "(2 of 5) prune on 'trained'" per step
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from pipeline.artifacts import Artifact
from pipeline.context import RunContext
from pipeline.errors import SlimpipeError, StageError
from pipeline.recipe import Recipe


@dataclass(frozen=True)
class Source:
    """Pseudo-stage that records the model the run starts from."""

    name: ClassVar[str] = "source"
    model: str
    width: float = 1.0


def save_source(ctx: RunContext, model, *, spec: str, width: float, trained: bool) -> Artifact:
    folder = ctx.out_dir / "00-source"
    tmp = _tmp_dir(ctx.out_dir, "00-source")
    ctx.stage_dir = tmp
    try:
        art = ctx.save_model(Source(model=spec, width=width), model, "source", parent=None,
                             kind="keras", meta={"trained": trained})
    finally:
        ctx.stage_dir = None
    art = _finalize(ctx, tmp, folder, [art])[0]
    ctx.artifacts.append(art)
    if trained:
        ctx.baseline = art.name
    return art


def run_recipe(recipe: Recipe, source: Artifact, ctx: RunContext,
               log: Callable[[str], None] = print) -> Artifact:
    """Run every step in order; returns the artifact that is current at the end."""
    current, total = source, len(recipe)
    for i, step in enumerate(recipe, 1):
        label = f"{i:02d}-{step.name}"
        log(f"[slimpipe] ({i} of {total}) {step.name} on '{current.name}'")
        tmp, started = _tmp_dir(ctx.out_dir, label), time.perf_counter()
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
        outputs = _finalize(ctx, tmp, ctx.out_dir / label, outputs)
        ctx.artifacts.extend(outputs)
        seconds = time.perf_counter() - started
        ctx.stage_timings.append({"name": step.name, "stage": step.stage.name,
                                  "seconds": round(seconds, 3)})
        made = ", ".join(a.name for a in outputs) or "no new artifacts"
        log(f"[slimpipe] ({i} of {total}) {step.name} done in {seconds:.1f} s: {made}")
        if step.stage.produces is not None:
            current = next((a for a in outputs if a.kind == step.stage.produces), current)
    return current


def _tmp_dir(out_dir: Path, label: str) -> Path:
    tmp = out_dir / f".{label}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _finalize(ctx: RunContext, tmp: Path, final: Path, outputs: list[Artifact]) -> list[Artifact]:
    """Rename the finished stage folder into place and point its artifacts at it."""
    if not tmp.exists():
        return outputs
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    moved = []
    for art in outputs:
        path = Path(art.path)
        if path.is_relative_to(tmp):
            art = dataclasses.replace(art, path=final / path.relative_to(tmp))
        moved.append(art)
    return moved
