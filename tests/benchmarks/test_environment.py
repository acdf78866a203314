"""environment(): keys present, and it works without /proc/cpuinfo."""
import builtins
import os

from slimpipe.benchmarks import environment as env_module
from slimpipe.benchmarks.environment import environment

KEYS = {"python", "platform", "versions", "cpu", "cores", "isa", "gpu"}
PACKAGES = {"tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "onnxruntime",
            "tf2onnx", "ai_edge_litert", "numpy"}


def test_environment_keys():
    env = environment()
    assert KEYS <= set(env)
    assert set(env["versions"]) == PACKAGES
    assert all(env["versions"][p] for p in PACKAGES)  # all installed in this venv
    assert env["cores"] == os.cpu_count()
    assert set(env["isa"]) <= set(env_module.ISA_FLAGS)
    assert isinstance(env["gpu"], list)
    if os.path.exists("/proc/cpuinfo") and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in env["isa"]


def test_environment_without_proc_cpuinfo(monkeypatch):
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    env = environment()
    assert KEYS <= set(env) and env["isa"] == []
