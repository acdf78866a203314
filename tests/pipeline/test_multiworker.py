"""`slimpipe compress --distribute multi-worker`: two worker processes on 127.0.0.1 (ports chosen
at run time) train and prune a small CNN with MultiWorkerMirroredStrategy; and a worker killed
with SIGKILL in the middle of pruning, the job restarted, resumes from the last epoch's backup.

The data set is synthetic (a bright square whose position is the class): these tests check the
mechanics of distribution against a single-process run of the same recipe on the same data.
Every process is started in its own session and killed at the end, whatever happens."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slimpipe.pipeline.cli import main

pytestmark = pytest.mark.slow
RECIPE = """
name = "mw"
[[stages]]
stage = "train"
epochs = 1
batch_size = 32
[[stages]]
stage = "prune"
epochs = 3
batch_size = 32
final_sparsity = 0.7
[[stages]]
stage = "strip"
"""
MODEL = ["--model", "cnn", "--width", "0.25"]


def square_data(path: Path, n_train: int = 1024, n_test: int = 256) -> Path:
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 4, n)
        x = rng.normal(60, 30, (n, 20, 20))
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, 2 + 9 * r: 9 + 9 * r, 2 + 9 * q: 9 + 9 * q] += 120
        return np.clip(x, 0, 255).astype(np.uint8), y

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Job:
    """The two workers of one `slimpipe compress --distribute multi-worker` job."""

    def __init__(self, files: dict, outs: list[Path], logs: Path):
        self.files, self.outs, self.logs, self.procs = files, outs, logs, []

    def start(self, tag: str) -> "Job":
        workers = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
        for task, out in enumerate(self.outs):
            cmd = [sys.executable, "-m", "slimpipe.pipeline.cli", "compress", *MODEL,
                   "--dataset", f"npz:{self.files['data']}", "--recipe", str(self.files["recipe"]),
                   "--out", str(out), "--distribute", "multi-worker", "--workers", workers,
                   "--task", str(task), "--worker-dir", str(self.files["workers"])]
            log = open(self.logs / f"{tag}-task{task}.log", "w")
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                               env={**os.environ, "SLIMPIPE_QUIET": "1"}))
        return self

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        while time.time() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.1)
        return [p.poll() for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []

    def log(self, tag: str, task: int) -> str:
        return (self.logs / f"{tag}-task{task}.log").read_text()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiworker")
    (root / "recipe.toml").write_text(RECIPE)
    return {"data": square_data(root / "squares.npz"), "recipe": root / "recipe.toml",
            "workers": root / "worker-dirs", "root": root}


@pytest.fixture(scope="module")
def single(setup):
    """The same recipe in one process, no strategy."""
    out = setup["root"] / "single"
    assert main(["compress", *MODEL, "--dataset", f"npz:{setup['data']}", "--recipe", str(setup["recipe"]),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two_workers(setup):
    # Each worker gets its own --out (as on two machines): the worker's must stay untouched.
    outs = [setup["root"] / "chief-out", setup["root"] / "worker-out"]
    job = Job(setup, outs, setup["root"]).start("whole")
    try:
        codes = job.wait(timeout=400)
    finally:
        job.kill()
    assert codes == [0, 0], job.log("whole", 0)[-3000:] + job.log("whole", 1)[-3000:]
    return outs, job


def manifest(folder: Path) -> dict:
    return json.loads((folder / ".slimpipe-stage.json").read_text())


def weights(path: Path) -> list[np.ndarray]:
    from slimpipe.pipeline.kerasio import load_keras

    return load_keras(path).get_weights()


def accuracy(path: Path, data: Path) -> float:
    from slimpipe.pipeline.kerasio import load_keras

    with np.load(data) as d:
        x, y = d["x_test"].astype(np.float32)[..., None] / 255.0, d["y_test"]
    return float(np.mean(np.argmax(load_keras(path).predict(x, verbose=0), axis=1) == y))


def worker_folder(setup) -> Path:
    [folder] = list(setup["workers"].iterdir())
    return folder


def test_two_workers_train_and_prune_like_one_process(setup, single, two_workers):
    (chief_out, worker_out), job = two_workers
    worker = worker_folder(setup)
    # The chief alone wrote the run: the worker's own --out was never created, and OUT holds
    # exactly what a single-process run writes.
    assert not worker_out.exists()
    assert sorted(p.name for p in chief_out.iterdir()) == sorted(p.name for p in single.iterdir())
    assert (chief_out / "report.json").is_file() and not list(worker.glob("report*"))
    assert "nothing into --out" in job.log("whole", 1)
    # Both workers end with identical weights (each kept its own copy of every model).
    for name in ("01-train/trained.h5", "02-prune/pruning.h5", "03-strip/pruned.h5"):
        for a, b in zip(weights(chief_out / name), weights(worker / name)):
            np.testing.assert_array_equal(a, b)
    # The target sparsity is reached, recorded from the replicas' check.
    pruning = manifest(chief_out / "02-prune")["outputs"][0]["meta"]
    assert pruning["achieved_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert pruning["distribute"] == {"strategy": "MultiWorkerMirroredStrategy", "workers": 2, "replicas": 2,
                                     "replicas_agree": True, "variables_checked": pruning["distribute"]["variables_checked"]}
    stripped = manifest(chief_out / "03-strip")["outputs"][0]["meta"]["sparsity"]
    assert stripped == pytest.approx(manifest(single / "03-strip")["outputs"][0]["meta"]["sparsity"], abs=0.005)
    # Accuracy close to the single-process run on the same data (global batch 32 either way).
    distributed, alone = (accuracy(out / "03-strip/pruned.h5", setup["data"]) for out in (chief_out, single))
    assert alone > 0.6 and abs(distributed - alone) <= 0.08, (distributed, alone)
    report = json.loads((chief_out / "report.json").read_text())
    assert any("MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s)" in n for n in report["notes"])


def _checkpoint(folder: Path) -> str | None:
    state = folder / "02-prune" / "backup" / "fit-1" / "chief" / "checkpoint"
    try:
        return state.read_text().split('"')[1]  # model_checkpoint_path: "ckpt-N"
    except (OSError, IndexError):
        return None


def test_worker_killed_mid_training_resumes_from_the_backup(setup, two_workers, tmp_path):
    (reference, _), _ = two_workers
    outs = [tmp_path / "chief-out", tmp_path / "worker-out"]
    setup = {**setup, "workers": tmp_path / "worker-dirs"}
    job = Job(setup, outs, tmp_path).start("first")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and job.procs[1].poll() is None:
            worker_dirs = list(setup["workers"].glob("*"))
            mine = _checkpoint(outs[0])
            if mine and worker_dirs and _checkpoint(worker_dirs[0]) == mine:
                break  # both backed up the same epoch: kill the worker in the next one
            time.sleep(0.05)
        assert job.procs[1].poll() is None, job.log("first", 1)[-3000:]
        os.kill(job.procs[1].pid, signal.SIGKILL)
        codes = job.wait(timeout=120)  # the chief stops once it misses the worker
        first_chief = job.log("first", 0)
    finally:
        job.kill()
    assert not (outs[0] / "03-strip").exists()  # it did stop in the middle of pruning
    if codes[0] is not None:
        assert codes[0] == 2 and "start every worker again" in first_chief, first_chief[-3000:]
    job = Job(setup, outs, tmp_path).start("again")
    try:
        codes = job.wait(timeout=300)
    finally:
        job.kill()
    assert codes == [0, 0], job.log("again", 0)[-3000:] + job.log("again", 1)[-3000:]
    assert "resuming from the backup of epoch" in job.log("again", 0)
    assert "train reused from an earlier run" in job.log("again", 0)
    pruning = manifest(outs[0] / "02-prune")
    assert any("resumed from its backup after epoch" in n for n in pruning["notes"])
    meta, whole = pruning["outputs"][0]["meta"], manifest(reference / "02-prune")["outputs"][0]["meta"]
    assert meta["distribute"]["resumed_after_epoch"]["fit-1"] >= 1
    assert meta["achieved_sparsity"] == whole["achieved_sparsity"]
    assert (manifest(outs[0] / "03-strip")["outputs"][0]["meta"]["sparsity"]
            == manifest(reference / "03-strip")["outputs"][0]["meta"]["sparsity"])
    assert not (outs[0] / "02-prune" / "backup").exists() and not outs[1].exists()
    report = json.loads((outs[0] / "report.json").read_text())
    assert {"trained", "pruning", "pruned"} <= {a["name"] for a in report["artifacts"]}
