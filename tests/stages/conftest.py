"""Fixtures the stage tests share: quiet training, a tiny model trained once per session, and
small helpers that make artifacts and run one stage the way the runner does."""
import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.kerasio import save_keras
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.train import Train
from tests.conftest import make_tiny_model


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


def keras_artifact(path, name="trained", **meta):
    """An artifact record for a Keras file a test wrote (as the train stage would record it)."""
    return make_artifact(name, path, fmt="keras", kind="keras", stage="train", config={}, parent=None,
                         meta=meta or None)


def run_on_tiny(stage, tmp, tiny_data, folder: str):
    """Run `stage` on a fresh tiny model in `tmp`; returns the artifacts it made."""
    ctx = RunContext(data=tiny_data, out_dir=tmp)
    src = make_artifact("source", save_keras(make_tiny_model(), tmp / "source.h5"), fmt="keras",
                        kind="keras", stage="source", config={}, parent=None)
    ctx.stage_dir = tmp / folder
    return run_stage(stage, src, ctx)


@pytest.fixture(scope="session")
def trained_path(tmp_path_factory, tiny_data):
    """The tiny model trained once for every stage test (magnitude pruning, clustering and
    quantization of random weights prove less). Tests read it; none may write to it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMPIPE_QUIET", "1")
        return run_on_tiny(Train(epochs=3), tmp_path_factory.mktemp("trained"), tiny_data, "train")[0].path
