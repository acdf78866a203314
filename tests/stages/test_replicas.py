"""Training under MirroredStrategy with two replicas (two logical CPU devices standing in for two
GPUs): the loss is scaled for the replicas, pruning state stays identical on each, tfmot's
per-replica QAT ranges are merged to what one device tracks, batch norm's sync-on-read
statistics pass the replica check, and train + prune + strip + pqat runs through the runner.
The measurements run in a process of their own (tests/stages/mirrored_checks.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    done = subprocess.run([sys.executable, "-m", "tests.stages.mirrored_checks", str(out)], cwd=ROOT,
                          env={**os.environ, "SLIMPIPE_QUIET": "1"}, capture_output=True, text=True,
                          timeout=600)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULTS ")), None)
    assert done.returncode == 0 and line, done.stderr[-3000:]
    return json.loads(line[len("RESULTS "):])


def test_two_replicas_step_like_one_device_on_the_distillation_loss(results):
    assert results["replicas"] == 2
    scaling = results["loss_scaling"]
    # SGD: an unscaled loss would move the weights twice as far on two replicas.
    assert scaling["moved"] > 0.05 and scaling["max_diff"] < 1e-4


def test_pruning_steps_masks_and_thresholds_are_identical_on_both_replicas(results):
    pruning = results["pruning"]
    assert pruning["pruning_steps"] and all(steps == [16, 16] for steps in pruning["pruning_steps"])
    assert pruning["masks_equal"] and all(a == b for a, b in pruning["thresholds"])
    assert pruning["same_on_replicas"] and pruning["meta"]["replicas_agree"]
    assert pruning["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert pruning["backup_left"] == []  # the finished fit's backup is gone


def test_qat_input_ranges_tracked_per_replica_are_merged_to_the_single_device_range(results):
    qat = results["qat_ranges"]
    low, high = qat["tfmot_alone"][0], qat["tfmot_alone"][1]
    assert low[0] != low[1] and high[0] != high[1]  # tfmot alone: each replica its own shard's range
    merged_low, merged_high = qat["merged"][0], qat["merged"][1]
    assert merged_low == [min(low)] * 2 and merged_high == [max(high)] * 2
    assert qat["single_device"][:2] == [merged_low[0], merged_high[0]]  # what one device sees
    assert qat["same_on_replicas"]
    record = qat["meta"]["qat_ranges"]
    assert any(name.endswith("_min") for name in record["merged"]) and "union" in record["rule"]


def test_batch_norm_statistics_are_per_replica_and_pass_the_check(results):
    assert results["batch_norm"]["moving_mean_copies_differ"]
    assert results["batch_norm"]["meta"]["replicas_agree"]


def test_train_prune_strip_pqat_run_under_two_replicas(results):
    run = results["recipe"]
    arts = run["artifacts"]
    for name in ("trained", "pruning", "pruned.pqat", "pruned.pqat.tflite"):
        record = arts[name]["meta"]["distribute"]
        assert record["strategy"] == "MirroredStrategy" and record["replicas"] == 2
        assert record["replicas_agree"]
    assert "distribute" not in arts["pruned"]["meta"]  # strip does not train
    assert arts["pruned"]["meta"]["sparsity"] == pytest.approx(0.7, abs=0.02)
    assert arts["pruned.pqat.tflite"]["meta"]["sparsity"] == pytest.approx(0.7, abs=0.02)
    assert arts["pruned.pqat.tflite"]["meta"]["validation"]["passed"]
    ranges = arts["pruned.pqat.tflite"]["meta"]["distribute"]["qat_ranges"]
    assert ranges["merged"] and np.all([n.endswith(("_min", "_max")) for n in ranges["merged"]])
    assert not [f for f in run["folders"] if "backup" in f or f.endswith(".tmp")]
