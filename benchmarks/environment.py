"""What the measurements ran on: versions, CPU, ISA extensions and GPUs.

>>> environment()["isa"]
['avx', 'avx2', 'avx512f', 'fma', 'f16c']
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "onnxruntime",
            "tf2onnx", "ai_edge_litert", "numpy")

# ISA extensions that matter for inference kernels, as /proc/cpuinfo spells them.
ISA_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8",
             "fma", "f16c", "neon", "asimd")


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (`tf_keras` or `tf-keras`), or None."""
    for name in (dist, dist.replace("_", "-")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpuinfo() -> tuple[str | None, list[str]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if model is None and key in ("model name", "hardware", "cpu model"):
                    model = value.strip()
                elif key in ("flags", "features"):  # x86 / ARM
                    flags.update(value.split())
    except OSError:
        pass
    return model or platform.processor() or None, [f for f in ISA_FLAGS if f in flags]


def environment() -> dict:
    """JSON-ready description of this machine and the installed runtimes."""
    from slimpipe.benchmarks.runtimes import gpu_devices

    cpu, isa = _cpuinfo()
    try:
        gpus = gpu_devices()
    except Exception as exc:  # a broken GPU stack must not stop the report
        gpus = [f"error: {type(exc).__name__}: {exc}"[:200]]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": isa,
        "gpu": gpus,
    }
