"""Fitting under a tf.distribute strategy (`slimpipe compress --distribute ...`): the data
sharded per worker, backups to resume from, and replicas that end with the same model.

`fit` (stages.finetune) calls `prepare_fit` before `model.fit` and `finish_fit` after it when a
training step runs under a strategy (`ctx.distribution.step` is set by the runner):

- The recipe's batch size is the global batch: tf.distribute splits each batch between the
  replicas, and the training set is sharded by element (AutoShardPolicy.DATA), so every worker
  reads the same shuffled order and keeps its share. Keras scales the compiled loss (the
  distillation loss included) for the number of replicas.
- tf_keras `BackupAndRestore` saves the model, the optimizer and the epoch at each epoch's end
  under the step's backup folder (`OUT/NN-step/backup/fit-N/`), and a restarted run resumes the
  fit from there. Each process keeps its own backup (a worker in its own folder), so OUT needs
  no shared filesystem; the processes compare the epochs they would resume from first, and
  start the fit over together when those differ.
- tfmot's quantization-aware training tracks some quantizer ranges per replica (the input's
  `AllValuesQuantizer` assigns a running min/max on each replica's own batches; the moving-average
  activation ranges are already averaged across replicas). `RangeSync` merges such ranges at each
  epoch's end, before the backup: the minimum of the replicas' minimums and the maximum of their
  maximums, which is the range of all the data the replicas saw, as one device would track it.
- After the fit, every variable of the model is compared across all replicas (a sum and a sum
  of squares per variable, gathered from every worker), so pruning steps, masks, thresholds and
  weights are checked identical rather than assumed; a difference stops the stage. Batch norm's
  moving statistics are sync-on-read variables: each replica tracks its shard, and every read
  (the saved file included) gets their mean.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

RANGE_SUFFIXES = ("_min", "_max")


def active(ctx):
    """The run's Distribution while a training step runs under it, else None."""
    dist = getattr(ctx, "distribution", None)
    return dist if dist is not None and dist.step is not None else None


def prepare_fit(model, data, dist, callbacks: list) -> tuple:
    """The sharded data set and the callbacks of a distributed fit: range merging and the backup
    first (the backup restores before UpdatePruningStep reads the optimizer's step count)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    first = []
    ranges = range_variables(model)
    if ranges:
        first.append(range_sync(dist, ranges))
    if dist.step.backup_dir is not None:
        dist.step.fits += 1
        folder = Path(dist.step.backup_dir) / f"fit-{dist.step.fits}"
        epoch = _agreed_epoch(folder, dist)
        if epoch >= 0:
            dist.step.meta.setdefault("resumed_after_epoch", {})[f"fit-{dist.step.fits}"] = epoch + 1
        first.append(backup_callback(folder))
    return data, first + list(callbacks)


def finish_fit(model, dist) -> None:
    """Check that every replica holds the same model, record it, and drop the finished fit's backup.
    Sync-on-read variables (batch norm's moving statistics) differ between replicas by design:
    each tracks its own shard, and a read (a save, a prediction) averages them."""
    import tensorflow as tf

    variables = [v for v in model.variables if v.synchronization != tf.VariableSynchronization.ON_READ]
    prints = fingerprints(dist, variables)
    differ = [v.name for i, v in enumerate(variables) if not np.all(prints[:, i] == prints[0, i])]
    if differ:
        raise RuntimeError(f"the {dist.replicas} replicas disagree on {len(differ)} variable(s) after "
                           f"fitting ({', '.join(differ[:5])}): the saved model would depend on which "
                           "replica wrote it")
    dist.step.meta.update(replicas_agree=True, variables_checked=len(variables))
    if dist.step.backup_dir is not None:
        shutil.rmtree(Path(dist.step.backup_dir) / f"fit-{dist.step.fits}", ignore_errors=True)


def _agreed_epoch(folder: Path, dist) -> int:
    """The last backed-up epoch every process can resume from (-1: start afresh); when the
    processes' backups differ (one was killed while writing it), all of them start over."""
    epoch, stage = saved_epoch(folder), dist.step.name
    epochs = dist.gather([epoch])[:, 0].astype(int)
    if len(set(epochs)) > 1:
        shutil.rmtree(folder, ignore_errors=True)
        dist.step.notes.append(f"{stage}: the workers' backups ended at different epochs "
                               f"({', '.join(map(str, epochs + 1))}); the fit started over")
        return -1
    if epoch >= 0:
        print(f"[slimpipe] {stage}: resuming from the backup of epoch {epoch + 1} in {folder}")
        dist.step.notes.append(f"{stage}: resumed from its backup after epoch {epoch + 1} (a restarted run)")
    return epoch


def saved_epoch(folder: Path) -> int:
    """The epoch (0-based) whose end the backup in `folder` holds, or -1 when there is none."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(Path(folder) / "chief"))
    if not latest:
        return -1
    return int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def backup_callback(folder: Path):
    """tf_keras BackupAndRestore into `folder`, kept by every process for itself."""
    return _callbacks()[0](str(folder), delete_checkpoint=True)


def range_variables(model) -> list:
    """The quantizer range variables (tfmot's `*_min`/`*_max`) of a quantization-aware model."""
    return [v for v in model.non_trainable_variables
            if v.name.split(":")[0].endswith(RANGE_SUFFIXES) and v.dtype.is_floating]


def across_replicas(dist, local: np.ndarray) -> np.ndarray:
    """[this worker's replicas, n] numbers -> [every replica, n], the chief's first (one
    collective exchange between workers; none within one)."""
    if dist.workers == 1:
        return local
    gathered = dist.gather(local.reshape(-1))  # one row per replica: its worker's whole block
    return gathered[::local.shape[0]].reshape(-1, local.shape[1])


def replica_copies(dist, variables) -> list[np.ndarray]:
    """Every replica's copy of each variable, stacked on a first axis (chief first)."""
    local = [[np.asarray(c.numpy(), dtype=np.float64).reshape(-1)
              for c in dist.strategy.experimental_local_results(v)] for v in variables]
    rows = np.stack([np.concatenate([copies[r] for copies in local]) for r in range(len(local[0]))])
    every = across_replicas(dist, rows)
    out, at = [], 0
    for v in variables:
        size = int(np.prod(v.shape))
        out.append(every[:, at:at + size].reshape((-1, *v.shape)))
        at += size
    return out


def fingerprints(dist, variables) -> np.ndarray:
    """[replicas, variables, 2]: the sum and the sum of squares of each replica's copy (computed
    where the copy lives; only these numbers travel)."""
    import tensorflow as tf

    def sums(copy):
        x = tf.cast(tf.reshape(copy, [-1]), tf.float64)
        return [float(tf.reduce_sum(x)), float(tf.reduce_sum(x * x))]

    local = [[sums(c) for c in dist.strategy.experimental_local_results(v)] for v in variables]
    rows = np.array([[value for per_var in local for value in per_var[r]] for r in range(len(local[0]))])
    return across_replicas(dist, rows).reshape(-1, len(variables), 2)


def merge_ranges(dist, variables) -> list[str]:
    """Give every replica the union of the replicas' ranges; returns the names it changed."""
    merged = []
    for v, copies in zip(variables, replica_copies(dist, variables)):
        if np.all(copies == copies[0]):
            continue
        low = v.name.split(":")[0].endswith("_min")
        v.assign((copies.min(axis=0) if low else copies.max(axis=0)).astype(v.dtype.as_numpy_dtype))
        merged.append(v.name.split(":")[0])
    return merged


def range_sync(dist, variables):
    """The callback that merges the replicas' quantizer ranges at each epoch's end."""
    return _callbacks()[1](dist, variables)


@functools.cache
def _callbacks():
    """The two Keras callbacks (defined once tf_keras is loaded)."""
    import tf_keras as keras

    class OwnBackup(keras.callbacks.BackupAndRestore):
        """tf_keras's non-chief workers read the chief's backup folder (which needs a shared
        filesystem) and write into a temporary one they delete; here each process writes the
        folder it reads, on its own disk. The processes train in lockstep, so their backups
        hold the same state."""

        def on_train_begin(self, logs=None):
            import tensorflow as tf

            try:
                super().on_train_begin(logs)
            except (ValueError, tf.errors.OpError) as exc:  # e.g. a structured_prune that chose
                shutil.rmtree(self.backup_dir, ignore_errors=True)  # other channels this time
                raise RuntimeError(f"the backup in {self.backup_dir} does not fit this fit's model "
                                   f"({' '.join(str(exc).split())[:200]}); it was removed: run the "
                                   "command again to start this fit over") from exc
            state = self._training_state
            state.write_checkpoint_manager = state.read_checkpoint_manager

    class RangeSync(keras.callbacks.Callback):
        """At each epoch's end, before the backup, merge the quantizer ranges the replicas
        tracked apart (see the module docstring), and record it in the step's meta."""

        def __init__(self, dist, variables):
            super().__init__()
            self.dist, self.variables = dist, variables

        def on_epoch_end(self, epoch, logs=None):
            merged = merge_ranges(self.dist, self.variables)
            record = self.dist.step.meta.setdefault("qat_ranges", {
                "rule": "union over the replicas at each epoch's end (minimum of the minimums, "
                        "maximum of the maximums)", "variables": len(self.variables), "merged": []})
            record["merged"] = sorted(set(record["merged"]) | set(merged))
            if merged:
                self.dist.step.notes.append(
                    f"{self.dist.step.name}: quantizer ranges tfmot tracked apart on the {self.dist.replicas} "
                    "replicas (each on its own shard) were merged at each epoch's end into the range of all "
                    "of them (minimum of the minimums, maximum of the maximums); the saved model and its "
                    "file use the merged ranges")

    return OwnBackup, RangeSync
