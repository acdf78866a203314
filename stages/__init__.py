"""The stage registry. Adding a stage takes one new file and one line here."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from stages.benchmark import Benchmark
from stages.bundle import Bundle
from stages.cluster import Cluster
from stages.export import Export
from stages.prune import Prune
from stages.quantize import Quantize
from stages.strip import Strip
from stages.structured_prune import StructuredPrune
from stages.train import Train

STAGES = {
    "train": Train,
    "prune": Prune,
    "strip": Strip,
    "structured_prune": StructuredPrune,
    "cluster": Cluster,
    "quantize": Quantize,
    "export": Export,
    "benchmark": Benchmark,
    "bundle": Bundle,
}
