"""What a run prints before its first line: TensorFlow's start-up notices, quiet by default.

Loading TensorFlow writes notices to stderr that are not about the run: the oneDNN notice,
"This TensorFlow binary is optimized to use available CPU instructions", "Could not find cuda
drivers" and, on a machine without a GPU, "failed call to cuInit: ... CUDA error", which reads
like a failure. Some of them are written by the C++ libraries as they load, before
TF_CPP_MIN_LOG_LEVEL is read, so no log level hides them. `load_tensorflow` therefore imports
TensorFlow and lets it look for devices with the process's stderr going to a temporary file,
then passes on every line that is not such a notice (a real error still shows).

    slimpipe compress ...              # slimpipe's own lines and Keras progress bars only
    slimpipe --verbose compress ...    # TensorFlow's notices and INFO logs as well

TF_ENABLE_ONEDNN_OPTS is left as it is: it changes the numerics, not only the messages.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from typing import Iterator

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# TensorFlow's C++ log lines look like "I0000 00:00:1796324478.159558   10068 port.cc:153] ...".
_LOG_LINE = r"(?P<level>[IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (?P<text>.*)"
STARTUP_NOTICE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*"  # second line of the CPU-instructions notice
    rf"|{_LOG_LINE}")
# Lines TensorFlow, LiteRT and the converter write while a run works that report nothing wrong.
RUN_NOISE = re.compile(
    r".*NodeDef mentions attribute \w+ which is not in the op definition.*"  # tf.data op version skew
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+")
TF_MODULES = r"(tensorflow|tf_keras|tensorflow_model_optimization)(\.|$)"  # their Python warnings
QUIET_LEVEL = "2"  # TF_CPP_MIN_LOG_LEVEL: errors only
VERBOSE_LEVEL = "0"  # everything, INFO included


def is_startup_notice(line: str) -> bool:
    """Whether a line TensorFlow wrote while loading is a notice rather than a real problem:
    INFO and WARNING log lines, and errors that only say CUDA could not be initialized."""
    m = STARTUP_NOTICE.fullmatch(line.rstrip("\r\n"))
    if m is None:
        return False
    if m.group("level") in ("E", "F"):
        return m.group("level") == "E" and re.search(r"cuInit|CUDA|cuda", m.group("text")) is not None
    return True


def configure_logging(verbose: bool = False) -> None:
    """Set TensorFlow's log levels (C++ and Python) before it loads; --verbose lowers them.
    Quiet, TensorFlow's own Python warnings are not shown either (e.g. the converter's
    "Statistics for quantized inputs were expected"); slimpipe's are."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = VERBOSE_LEVEL
        logging.getLogger("tensorflow").setLevel(logging.INFO)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
        # e.g. "Compiled the loaded model, but the compiled metrics have yet to be built"
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=TF_MODULES)


def load_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and initialize its devices, keeping its start-up notices off stderr
    unless `verbose`. Does nothing more than `configure_logging` once TensorFlow is loaded."""
    configure_logging(verbose)
    if "tensorflow" in sys.modules:
        return
    with contextlib.nullcontext() if verbose else filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where the cuInit error is written


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Send file descriptor 2 (C++ and Python writes alike) to a temporary file for the block,
    then write what it caught to stderr, minus the lines `is_startup_notice` names."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_startup_notice(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def is_run_noise(line: str) -> bool:
    """Whether a line written during a run is one of RUN_NOISE or a start-up notice."""
    return RUN_NOISE.fullmatch(line.rstrip("\r\n")) is not None or is_startup_notice(line)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """For a whole command: file descriptor 2 goes through a pipe whose reader passes every line
    on at once, except the ones `is_run_noise` names. Errors and tracebacks pass unchanged."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    reader = threading.Thread(target=_pass_on, args=(read_end, saved), daemon=True)
    reader.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer goes: the reader sees the end and stops
        reader.join(timeout=5)
        os.close(saved)


def _pass_on(read_end: int, target: int) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for line in lines:
            if not is_run_noise(line.decode("utf-8", errors="replace")):
                os.write(target, line)
