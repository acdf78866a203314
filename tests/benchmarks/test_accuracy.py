"""predict_all, accuracy and top1_agreement."""
import numpy as np
import pytest

from slimpipe.benchmarks.accuracy import accuracy, predict_all, top1_agreement
from slimpipe.pipeline.errors import ConfigError


class Recorder:
    def __init__(self):
        self.batches = []

    def predict(self, x):
        self.batches.append(len(x))
        return np.stack([x.sum(axis=(1, 2, 3)), -x.sum(axis=(1, 2, 3))], axis=1)


def test_predict_all_batches_and_keeps_order():
    x = np.random.default_rng(0).normal(size=(10, 2, 2, 1)).astype(np.float32)
    rt = Recorder()
    out = predict_all(rt, x, batch=4)
    assert rt.batches == [4, 4, 2]
    assert out.dtype == np.float32 and out.shape == (10, 2)
    np.testing.assert_allclose(out[:, 0], x.sum(axis=(1, 2, 3)), rtol=1e-6)
    with pytest.raises(ConfigError, match="batch"):
        predict_all(rt, x, batch=0)
    with pytest.raises(ConfigError, match="at least one"):
        predict_all(rt, x[:0])


def test_accuracy_and_agreement():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert accuracy(logits, np.array([0, 1, 1, 1])) == 0.5
    assert accuracy(logits, np.eye(2)[[0, 1, 0, 0]]) == 1.0  # one-hot labels
    other = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert top1_agreement(logits, other) == 0.75
    with pytest.raises(ConfigError):
        accuracy(logits, np.array([0, 1]))
    with pytest.raises(ConfigError):
        top1_agreement(logits, other[:3])
