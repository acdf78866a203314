"""The stage registry. Adding a stage takes one new file and one line here."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from stages.benchmark import Benchmark
from stages.export import Export
from stages.prune import Prune
from stages.strip import Strip
from stages.train import Train

STAGES = {
    "train": Train,
    "prune": Prune,
    "strip": Strip,
    "export": Export,
    "benchmark": Benchmark,
}
