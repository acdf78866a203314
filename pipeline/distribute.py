"""Training stages under `tf.distribute`: the strategy, which process is the chief, and the few
decisions the processes of a run take together.

    slimpipe compress ... --distribute mirrored        # one process, every local GPU
    # two machines, each runs the same command with its own --task:
    slimpipe compress ... --distribute multi-worker --workers a:2222,b:2222 --task 0   # on a
    slimpipe compress ... --distribute multi-worker --workers a:2222,b:2222 --task 1   # on b
    # or, instead of --workers/--task, the TF_CONFIG variable TensorFlow's own tools set

A recipe may choose the strategy in a top-level table (the command line wins):

    [distribute]
    strategy = "multi-worker"

A stage whose `trains` is true (every stage that fits a model) runs inside the strategy's scope,
so the models it clones and wraps hold distributed variables, and every process runs it in
step. The chief (task 0, or TF_CONFIG's "chief") runs every step and alone writes into OUT; the
other workers run only the steps that train or make the next model (e.g. strip), into a folder
of their own (`worker_folder`), and wait for the chief between them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from slimpipe.pipeline.errors import ConfigError

STRATEGIES = ("mirrored", "multi-worker")
STRATEGY_NAMES = {"mirrored": "MirroredStrategy", "multi-worker": "MultiWorkerMirroredStrategy"}
_ADDRESS = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


@dataclass(frozen=True)
class DistributeOptions:
    """What the command line and the recipe ask for; `strategy` None runs without tf.distribute."""

    strategy: str | None = None
    workers: tuple[str, ...] = ()
    task: int | None = None

    def tf_config(self) -> dict[str, Any] | None:
        """The TF_CONFIG that --workers/--task stand for (None when they were not given)."""
        if not self.workers:
            return None
        return {"cluster": {"worker": list(self.workers)}, "task": {"type": "worker", "index": self.task}}


def distribute_options(strategy: str | None, recipe_table: Mapping[str, Any] | None,
                       workers: str | None, task: int | None,
                       environ: Mapping[str, str] = os.environ) -> DistributeOptions:
    """Check --distribute, --workers, --task and the recipe's [distribute] table against each
    other (the command line wins over the recipe); raises a one-line ConfigError."""
    chosen = strategy or check_table(recipe_table or {}).get("strategy")
    if chosen is not None and chosen not in STRATEGIES:
        raise ConfigError(f"--distribute must be one of {', '.join(STRATEGIES)}. Received: {chosen!r}")
    addresses = tuple(a.strip() for a in workers.split(",")) if workers else ()
    if (workers is not None or task is not None) and chosen != "multi-worker":
        raise ConfigError("--workers and --task configure --distribute multi-worker. Received: "
                          f"--distribute {chosen}; fix: add --distribute multi-worker or drop them")
    if chosen != "multi-worker":
        return DistributeOptions(chosen)
    if not addresses:
        if task is not None:
            raise ConfigError("--task needs --workers host:port,... (every worker's address, the "
                              "chief's first). Received: --task only")
        _check_tf_config(environ.get("TF_CONFIG"))
        return DistributeOptions(chosen)
    bad = [a for a in addresses if not _ADDRESS.fullmatch(a)]
    if bad or len(set(addresses)) != len(addresses):
        raise ConfigError("--workers expects distinct host:port addresses separated by commas, e.g. "
                          f"10.0.0.1:2222,10.0.0.2:2222. Received: {workers!r}")
    if task is None or not 0 <= task < len(addresses):
        raise ConfigError(f"--task must be this machine's index in --workers, 0 to {len(addresses) - 1} "
                          f"(0 is the chief). Received: --task {task}")
    return DistributeOptions(chosen, addresses, task)


def check_table(table: Mapping[str, Any]) -> Mapping[str, Any]:
    """A recipe's [distribute] table: only `strategy`, one of STRATEGIES."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"recipe: 'distribute' must be a table ([distribute]). Received: {table!r}")
    unknown = sorted(set(table) - {"strategy"})
    if unknown:
        raise ConfigError(f"recipe [distribute] has unknown keys {unknown}: expected only strategy "
                          "(workers and the task index are given per machine: --workers/--task or TF_CONFIG)")
    if "strategy" in table and table["strategy"] not in STRATEGIES:
        raise ConfigError(f"recipe [distribute] strategy must be one of {', '.join(map(repr, STRATEGIES))}. "
                          f"Received: {table['strategy']!r}")
    return table


def _check_tf_config(text: str | None) -> None:
    fix = ("fix: give --workers host:port,... and --task N, or set TF_CONFIG to "
           '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    if not text:
        raise ConfigError(f"--distribute multi-worker needs the cluster's addresses; neither --workers nor "
                          f"TF_CONFIG is set: {fix}")
    try:
        config = json.loads(text)
        task, cluster = config["task"], config["cluster"]
        ok = task["type"] in cluster and 0 <= int(task["index"]) < len(cluster[task["type"]])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"TF_CONFIG does not name this process's task in its cluster. Received: "
                          f"{text[:200]!r}; {fix}")


def logical_cpus(count: int) -> None:
    """Split the CPU into `count` logical devices, so MirroredStrategy has `count` replicas where a
    machine with GPUs would have one per GPU (tests and trials on CPU-only machines). Call it
    before TensorFlow runs anything."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def start(options: DistributeOptions) -> "Distribution | None":
    """Create the strategy (before TensorFlow runs anything else: MultiWorkerMirroredStrategy
    configures the process's collective ops); None when no strategy was asked for. A
    multi-worker strategy waits here until every worker has started."""
    if options.strategy is None:
        return None
    import tensorflow as tf

    if options.strategy == "mirrored":
        return Distribution(tf.distribute.MirroredStrategy(), "mirrored")
    if options.workers:
        os.environ["TF_CONFIG"] = json.dumps(options.tf_config())
    return Distribution(tf.distribute.MultiWorkerMirroredStrategy(), "multi-worker")


@dataclass
class StepState:
    """What the training step running now adds to its artifacts' meta and to the report."""

    name: str  # the step's name
    backup_dir: Path | None = None
    fits: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Distribution:
    """The strategy of a run and where this process stands in it."""

    def __init__(self, strategy, kind: str):
        self.strategy, self.kind = strategy, kind
        resolver = getattr(strategy, "cluster_resolver", None)
        self.task = int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0
        self.is_chief = bool(strategy.extended.should_checkpoint)
        self.replicas = int(strategy.num_replicas_in_sync)
        self.workers = self.replicas // max(1, len(strategy.extended.worker_devices))
        self.step: StepState | None = None  # set by the runner while a training step runs
        self._rows = None

    # -- which process runs what -----------------------------------------------------------
    @staticmethod
    def trains(stage) -> bool:
        return bool(getattr(stage, "trains", False))

    def shared(self, stage) -> bool:
        """Whether every process runs `stage`: it trains, or makes the model the next step gets."""
        return self.trains(stage) or stage.produces is not None

    def runs(self, stage) -> bool:
        return self.is_chief or self.shared(stage)

    def scope(self, stage):
        """The strategy's scope for a training stage; nothing for the others."""
        return self.strategy.scope() if self.trains(stage) else contextlib.nullcontext()

    def label(self) -> str:
        return "chief" if self.is_chief else f"worker {self.task}"

    @property
    def name(self) -> str:
        return STRATEGY_NAMES[self.kind]

    # -- decisions taken together ------------------------------------------------------------
    def gather(self, row) -> np.ndarray:
        """Every process's `row` (a short list of numbers), one row per replica, the chief's
        first: a collective that every process must call at the same point of the run."""
        row = np.asarray(row, dtype=np.float64).reshape(1, -1)
        if self.workers == 1:
            return np.repeat(row, self.replicas, axis=0)
        if self._rows is None:
            import tensorflow as tf

            strategy = self.strategy

            @tf.function
            def rows(value):
                return strategy.gather(strategy.run(tf.identity, args=(value,)), axis=0)

            self._rows = rows
        return self._rows(row).numpy()

    def all_agree(self, flag: bool) -> bool:
        """True when `flag` is true on every process (e.g. each can reuse a finished step)."""
        return bool(np.all(self.gather([float(bool(flag))])))

    def from_chief(self, value: float) -> float:
        """The chief's `value` on every process (e.g. a measured latency that steers a stage)."""
        return float(self.gather([value])[0, 0])

    def same_everywhere(self, text: str) -> bool:
        """Whether every process holds the same `text` (compared by a 52-bit hash)."""
        return len(set(self.gather([_hash52(text)])[:, 0])) == 1

    def record(self) -> dict[str, Any]:
        return {"strategy": self.name, "workers": self.workers, "replicas": self.replicas}


def _hash52(text: str) -> float:
    return float(int(hashlib.sha256(text.encode()).hexdigest()[:13], 16))


def worker_folder(out: Path, task: int, root: Path | None = None) -> Path:
    """Where worker `task` keeps its copies of the models and its backups: never inside OUT.
    The same OUT gives the same folder, so a restarted worker finds its finished steps."""
    resolved = Path(out).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name) or "out"
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "slimpipe-workers"
    folder = base / f"{name}-{tag}-task{task}"
    if folder.resolve().is_relative_to(resolved):
        raise ConfigError(f"--worker-dir must be outside --out: workers write nothing into OUT. "
                          f"Received: {str(base)!r} inside {str(out)!r}")
    return folder


def in_strategy_scope() -> bool:
    """Whether code runs inside a tf.distribute strategy's scope (a training step's)."""
    if "tensorflow" not in sys.modules:  # nothing can have entered a scope yet
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()
