"""--distribute options, the recipe's [distribute] table, worker folders, step backups, and how the
runner shares a recipe between the chief and a worker. The strategy's collectives are stood in
for here (`Peers`); the real strategies run in tests/stages/test_replicas.py (MirroredStrategy)
and tests/pipeline/test_multiworker.py (MultiWorkerMirroredStrategy)."""
import contextlib
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.distribute import DistributeOptions, Distribution, distribute_options, worker_folder
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.recipe import Recipe, Step, build_recipe
from slimpipe.pipeline.runner import backup_folder, run_recipe, save_source
from slimpipe.stages import STAGES

CLUSTER = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}


def test_no_strategy_unless_asked():
    assert distribute_options(None, None, None, None) == DistributeOptions()
    assert distribute_options(None, {}, None, None).strategy is None


def test_the_recipe_chooses_the_strategy_and_the_command_line_wins():
    assert distribute_options(None, {"strategy": "mirrored"}, None, None) == DistributeOptions("mirrored")
    options = distribute_options("multi-worker", {"strategy": "mirrored"}, "a:1, b:2", 1)
    assert options == DistributeOptions("multi-worker", ("a:1", "b:2"), 1)
    assert options.tf_config() == CLUSTER


def test_tf_config_from_the_environment_stands_for_workers_and_task():
    options = distribute_options("multi-worker", None, None, None, environ={"TF_CONFIG": json.dumps(CLUSTER)})
    assert options == DistributeOptions("multi-worker") and options.tf_config() is None


@pytest.mark.parametrize("strategy, table, workers, task, environ, match", [
    ("gpus", None, None, None, {}, "--distribute must be one of mirrored, multi-worker. Received: 'gpus'"),
    (None, {"strategy": "ps"}, None, None, {}, r"\[distribute\] strategy must be one of"),
    (None, {"workers": ["a:1"]}, None, None, {}, r"\[distribute\] has unknown keys \['workers'\]"),
    (None, "mirrored", None, None, {}, "'distribute' must be a table"),
    ("mirrored", None, "a:1,b:2", 0, {}, "--workers and --task configure --distribute multi-worker"),
    (None, None, None, 0, {}, "--workers and --task configure"),
    ("multi-worker", None, None, None, {}, "neither --workers nor TF_CONFIG is set"),
    ("multi-worker", None, None, 1, {}, "--task needs --workers"),
    ("multi-worker", None, "a:1,b", 0, {}, "distinct host:port addresses"),
    ("multi-worker", None, "a:1,a:1", 0, {}, "distinct host:port addresses"),
    ("multi-worker", None, "a:1,b:2", 2, {}, "--task must be this machine's index in --workers, 0 to 1"),
    ("multi-worker", None, "a:1,b:2", None, {}, "--task must be"),
    ("multi-worker", None, None, None, {"TF_CONFIG": "{}"}, "TF_CONFIG does not name this process's task"),
    ("multi-worker", None, None, None, {"TF_CONFIG": json.dumps({**CLUSTER, "task": {"type": "worker", "index": 5}})},
     "TF_CONFIG does not name"),
])
def test_bad_distribute_options_are_one_line_errors(strategy, table, workers, task, environ, match):
    with pytest.raises(ConfigError, match=match) as info:
        distribute_options(strategy, table, workers, task, environ=environ)
    assert "\n" not in str(info.value)


def test_the_cli_refuses_bad_options_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--distribute", "mirrored", "--workers", "a:1,b:2", "--task", "0", "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("slimpipe: error: --workers and --task configure") and err.count("\n") == 1


def test_a_recipe_may_carry_a_distribute_table():
    data = {"stages": [{"stage": "train", "epochs": 1}], "distribute": {"strategy": "multi-worker"}}
    assert build_recipe(data, STAGES).distribute == {"strategy": "multi-worker"}
    with pytest.raises(ConfigError, match=r"\[distribute\] has unknown keys \['task'\]"):
        build_recipe({**data, "distribute": {"task": 1}}, STAGES)


def test_a_worker_folder_is_stable_per_out_and_task_and_never_inside_out(tmp_path):
    out = tmp_path / "run"
    first = worker_folder(out, 1, tmp_path / "w")
    assert first == worker_folder(out, 1, tmp_path / "w") != worker_folder(out, 2, tmp_path / "w")
    assert not first.is_relative_to(out) and first.name.endswith("-task1")
    with pytest.raises(ConfigError, match="--worker-dir must be outside --out"):
        worker_folder(out, 1, out / "inside")


def test_a_step_backup_is_kept_for_its_key_and_dropped_for_another(tmp_path):
    backup = backup_folder(tmp_path / "02-prune", "key-a")
    (backup / "fit-1").mkdir()
    assert backup == tmp_path / "02-prune" / "backup" and (backup / "KEY").read_text() == "key-a"
    assert (backup_folder(tmp_path / "02-prune", "key-a") / "fit-1").is_dir()  # a restart resumes
    assert not (backup_folder(tmp_path / "02-prune", "key-b") / "fit-1").exists()  # the recipe changed


# -- the runner under a distribution, with the collectives stood in for --------------------------
class Peers(Distribution):
    """A two-worker run seen from one process; the other process answers `peer_reuses`."""

    def __init__(self, chief: bool, peer_reuses: bool = True):
        strategy = SimpleNamespace(
            extended=SimpleNamespace(should_checkpoint=chief, worker_devices=("/cpu:0",)), num_replicas_in_sync=2,
            cluster_resolver=SimpleNamespace(task_type="worker", task_id=0 if chief else 1),
            scope=contextlib.nullcontext)
        super().__init__(strategy, "multi-worker")
        self.peer_reuses, self.asked, self.seen_steps = peer_reuses, [], []

    def gather(self, row):
        self.asked.append(list(row))
        return np.array([row, [1.0 if self.peer_reuses else 0.0]])


@dataclass(frozen=True)
class Fit:
    """A training stand-in: scales the weights and records the step state it ran in."""
    name: ClassVar[str] = "fit"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = "keras"
    trains: ClassVar[bool] = True
    label: str = "fitted"

    def run(self, art, ctx):
        from slimpipe.pipeline.kerasio import clone_with_weights

        ctx.distribution.seen_steps.append((ctx.distribution.step.name, ctx.distribution.step.backup_dir))
        assert (ctx.distribution.step.backup_dir / "KEY").is_file()
        model = clone_with_weights(ctx.keras_model(art))
        model.set_weights([w * 2 for w in model.get_weights()])
        return [ctx.save_model(self, model, self.label, parent=art, kind="keras")]


@dataclass(frozen=True)
class Measure:
    """A chief-only stand-in (deployment files, no next model)."""
    name: ClassVar[str] = "measure"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = None

    def run(self, art, ctx):
        ctx.stage_path("numbers.txt").write_text("1")
        return []


def _run(ctx, tiny_model, dist):
    ctx.distribution, ctx.stage_dir = dist, None
    source = save_source(ctx, tiny_model, spec="tiny", width=1.0, trained=False)
    recipe = Recipe("r", (Step("fit", Fit()), Step("measure", Measure()), Step("fit2", Fit("fitted2"))))
    lines = []
    run_recipe(recipe, source, ctx, log=lines.append)
    return lines


def test_a_worker_runs_the_training_steps_and_leaves_the_others_to_the_chief(ctx, tiny_model):
    worker = Peers(chief=False)
    lines = _run(ctx, tiny_model, worker)
    assert "[slimpipe] (2 of 3) measure: left to the chief" in lines
    assert sorted(p.name for p in ctx.out_dir.iterdir() if p.name[0].isdigit()) == ["00-source", "01-fit", "03-fit2"]
    assert [name for name, _ in worker.seen_steps] == ["fit", "fit2"]
    assert worker.seen_steps[0][1] == ctx.out_dir / "01-fit" / "backup"
    assert not (ctx.out_dir / "01-fit" / "backup").exists()  # the finished step replaced its folder
    fitted = ctx.find("fitted")
    assert fitted.meta["distribute"] == {"strategy": "MultiWorkerMirroredStrategy", "workers": 2, "replicas": 2}
    assert worker.asked == [[0.0], [0.0]]  # nothing to reuse yet, asked once per shared step


def test_a_finished_step_is_reused_only_when_every_process_can(ctx, tiny_model, tmp_path):
    _run(ctx, tiny_model, Peers(chief=True))
    for peer_reuses, reused in ((False, False), (True, True)):
        again = type(ctx)(data=ctx.data, out_dir=ctx.out_dir, model_name="tiny")
        lines = _run(again, tiny_model, Peers(chief=True, peer_reuses=peer_reuses))
        assert any("(1 of 3) fit reused" in line for line in lines) is reused
        assert any("(2 of 3) measure reused" in line for line in lines)  # the chief's own decision


class Echo(Peers):
    """A peer that answers with this process's own numbers, or with other ones."""

    def __init__(self, same: bool):
        super().__init__(chief=True)
        self.same = same

    def gather(self, row):
        return np.array([row, row if self.same else [value + 1 for value in row]])


def test_processes_with_different_inputs_refuse_to_run_together(ctx):
    from slimpipe.pipeline.distribute_run import join

    recipe = Recipe("r", (Step("fit", Fit()),))
    args = SimpleNamespace(seed=0, model="tiny", width=1.0)
    lines = []
    join(Echo(same=True), ctx, recipe, args, lines.append)
    assert "2 worker(s), 2 replica(s)" in lines[0] and "this process is the chief" in lines[0]
    assert any("MultiWorkerMirroredStrategy" in note for note in ctx.notes)
    with pytest.raises(ConfigError, match="the workers of this run differ in their recipe, model, data or --seed"):
        join(Echo(same=False), ctx, recipe, args, lines.append)
