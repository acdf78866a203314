"""The stage registry. Adding a stage takes one new file and one line here."""
import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from slimpipe.stages.benchmark import Benchmark
from slimpipe.stages.bundle import Bundle
from slimpipe.stages.cluster import Cluster
from slimpipe.stages.export import Export
from slimpipe.stages.low_rank import LowRank
from slimpipe.stages.prune import Prune
from slimpipe.stages.quantize import Quantize
from slimpipe.stages.sensitivity import Sensitivity
from slimpipe.stages.strip import Strip
from slimpipe.stages.structured_prune import StructuredPrune
from slimpipe.stages.train import Train

STAGES = {
    "train": Train,
    "prune": Prune,
    "strip": Strip,
    "structured_prune": StructuredPrune,
    "low_rank": LowRank,
    "cluster": Cluster,
    "quantize": Quantize,
    "export": Export,
    "benchmark": Benchmark,
    "bundle": Bundle,
    "sensitivity": Sensitivity,
}
