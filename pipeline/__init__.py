"""slimpipe's core: stage protocol, artifacts, recipes, runner, report and CLI.

tfmot works only with Keras 2, so the legacy-Keras switch must be set before TensorFlow is
imported anywhere in the process. Every slimpipe package imports this one first.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.2"
