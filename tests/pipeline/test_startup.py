"""TensorFlow's start-up notices stay off stderr by default and show with --verbose."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slimpipe.pipeline.startup import filtered_stderr, is_startup_notice

# Lines TensorFlow 2.21 writes while it loads on a machine without a GPU (copied from a run).
NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796324538.021937   10591 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796324538.022557   10591 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796324538.122803   10591 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "E0000 00:00:1796324544.245691   10591 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
REAL = [
    "E0000 00:00:1796324544.245691   10591 op_kernel.cc:1830] OP_REQUIRES failed at "
    "conv_ops.cc:1068 : INVALID_ARGUMENT: input depth must be evenly divisible by filter depth",
    "F0000 00:00:1796324544.245691   10591 cuda_platform.cc:52] Check failed: CUDA state",
    "Traceback (most recent call last):",
    "/site-packages/tensorflow/python/framework/ops.py:1: UserWarning: something",
    "[slimpipe] cnn on fashion_mnist: 3000 training and 10000 test examples",
]
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ", re.M)


@pytest.mark.parametrize("line", NOTICES)
def test_startup_notices_are_recognized(line):
    assert is_startup_notice(line) and is_startup_notice(line + "\n")


@pytest.mark.parametrize("line", REAL)
def test_other_lines_are_not_notices(line):
    assert not is_startup_notice(line)


def test_filtered_stderr_drops_notices_and_passes_the_rest(capfd):
    with filtered_stderr():
        for line in NOTICES + REAL:
            os.write(2, (line + "\n").encode())
    assert capfd.readouterr().err.splitlines() == REAL


def test_filtered_stderr_passes_everything_on_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError, match="boom"):
        with filtered_stderr():
            os.write(2, b"a real problem\n")
            raise RuntimeError("boom")
    assert capfd.readouterr().err == "a real problem\n"


@pytest.mark.slow
def test_a_run_prints_no_tensorflow_startup_lines_unless_verbose(tmp_path):
    """The console script loads TensorFlow before it reads the recipe; a wrong recipe name then
    ends the run, so stderr holds exactly what start-up printed plus the one-line error."""
    exe = Path(sys.executable).with_name("slimpipe")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = ["compress", "--recipe", "no-such-recipe", "--out", str(tmp_path / "o")]
    quiet = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()], quiet.stderr
    assert quiet.stderr.startswith("slimpipe: error: unknown recipe 'no-such-recipe'")
    loud = subprocess.run([exe, "--verbose", *argv], capture_output=True, text=True, timeout=300,
                          env=env)
    assert loud.returncode == 2
    assert TF_LOG_LINE.search(loud.stderr), loud.stderr  # TensorFlow's own log lines
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_quiet_stderr_drops_run_noise_and_passes_everything_else_at_once(capfd):
    from slimpipe.pipeline.startup import quiet_stderr

    noise = ("E0000 00:00:1796333253.355807    6963 node_def_util.cc:682] NodeDef mentions attribute "
             "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\n"
             "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
             "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
             "output_inference_type: FLOAT32\n")
    real = "E0000 00:00:1.0    1 kernel.cc:1] a real error\nTraceback (most recent call last):\n"
    with quiet_stderr():
        os.write(2, noise.encode())
        os.write(2, real.encode())
    assert capfd.readouterr().err == real
