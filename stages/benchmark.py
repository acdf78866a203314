"""Measure every artifact of the run: size, sparsity, accuracy and latency, in its own runtime."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

from slimpipe.pipeline.artifacts import KERAS_KINDS, Artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.stage import StageResult, check_count, require

from slimpipe.benchmarks.accuracy import accuracy, predict_all, top1_agreement
from slimpipe.benchmarks.eligibility import eligibility
from slimpipe.benchmarks.measure import file_size, interleaved_latency
from slimpipe.benchmarks.complexity import keras_complexity
from slimpipe.benchmarks.runtimes import ORT_GPU_PROVIDERS, RUNTIME_OF, gpu_devices, open_runtime
from slimpipe.benchmarks.sparse_kernel import csr_reference
from slimpipe.benchmarks.sparsity import SPARSE_MIN, size_floor_bytes, weight_sparsity


@dataclass(frozen=True)
class Benchmark:
    """Measure each artifact; the report is built from these measurements.

    Accuracy is computed on the full test set (or `accuracy_limit` examples) by the artifact's
    own runtime: Keras, LiteRT or onnxruntime. Latency is measured for TFLite and ONNX files at
    each (threads, batch) pair of `latency`; threads 0 means all cores. All rows are timed
    together in `passes` interleaved passes of min_seconds / passes each (every row's p50 pools
    its passes; `pass_p50_ms` lists them), so that the machine slowing down for a while shifts
    every artifact alike and ratios between artifacts stay fair. Each latency row also
    holds the runtime's load/init time (`load_ms`), measured apart from inference. GPU rows are
    added for ONNX files when onnxruntime has a CUDA or TensorRT provider (TensorRT with its 2:4
    sparse tactics enabled), and for Keras files when TensorFlow sees a GPU. Keras files also get
    their parameter count and MACs per example (`complexity`, see benchmarks.complexity).

    With `sparse_kernels`, every artifact with at least 30% zero weights also gets: per-layer
    eligibility labels (`eligibility`, for .tflite/.onnx), a LiteRT run at 1 thread, batch 1
    with the builtin kernels (`resolver` "builtin": BUILTIN_WITHOUT_DEFAULT_DELEGATES, whose
    FULLY_CONNECTED reads 1x4-block sparse weights) for sparse .tflite files and the baseline's
    dense .tflite, and a CSR-vs-dense reference timing on a Keras file's weights
    (`sparse_kernel`). That costs a few seconds.

    >>> Benchmark(latency=((1, 1), (0, 32)), min_seconds=1.0)
    """

    name: ClassVar[str] = "benchmark"
    accepts: ClassVar[tuple[str, ...]] = KERAS_KINDS
    produces: ClassVar[str | None] = None

    latency: tuple[tuple[int, int], ...] = ((1, 1), (1, 32), (0, 1), (0, 32))
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    passes: int = 10
    accuracy_limit: int | None = None
    sparse_kernels: bool = True

    def __post_init__(self):
        ok = all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, int) for v in p)
                 and p[0] >= 0 and p[1] >= 1 for p in self.latency)
        require(ok, self.name, "latency must be a list of [threads, batch] pairs with threads >= 0 "
                f"(0 = all cores) and batch >= 1. Received: latency={self.latency!r}")
        check_count(self.name, "warmup", self.warmup)
        check_count(self.name, "min_runs", self.min_runs, minimum=1)
        check_count(self.name, "passes", self.passes, minimum=1)
        require(isinstance(self.sparse_kernels, bool), self.name, f"sparse_kernels must be true "
                f"or false. Received: sparse_kernels={self.sparse_kernels!r}")
        require(isinstance(self.min_seconds, (int, float)) and self.min_seconds >= 0, self.name,
                f"min_seconds must be >= 0. Received: min_seconds={self.min_seconds!r}")
        if self.accuracy_limit is not None:
            check_count(self.name, "accuracy_limit", self.accuracy_limit, minimum=1)

    def run(self, art: Artifact, ctx: RunContext) -> StageResult:
        x, y = ctx.data.x_test, ctx.data.y_test
        if self.accuracy_limit:
            x, y = x[: self.accuracy_limit], y[: self.accuracy_limit]
        reference = None
        if ctx.baseline:
            reference = predict_all(open_runtime(ctx.find(ctx.baseline).path, "keras"), x)
        gpus = gpu_devices()
        jobs, measured = [], {}
        for target in ctx.measurable():
            if target.meta.get("reloads") is False:
                continue  # a QAT model tfmot cannot load back (the quantize stage says so)
            measured[target.name], target_jobs = self._measure(target, x, y, reference, gpus)
            jobs += target_jobs
        if self.sparse_kernels:
            jobs += self._sparse_kernels(ctx, x, measured)
        self._time(measured, jobs)
        result = StageResult(measurements=measured)
        if not gpus:
            result.note("No GPU in this environment (no CUDA/TensorRT provider for onnxruntime, no TF "
                        "GPU): the report has CPU rows only.")
        path = ctx.stage_path("measurements.json")
        path.write_text(json.dumps(measured, indent=2, sort_keys=True))
        return result

    def _measure(self, target: Artifact, x, y, reference, gpus) -> tuple[dict, list]:
        m = {**file_size(target.path), **weight_sparsity(target.path, target.format)}
        m["size_floor_bytes"] = size_floor_bytes(m["layers"])
        m["accuracy_runtime"] = RUNTIME_OF[target.format]
        runtime = open_runtime(target.path, target.format, threads=0)
        logits = predict_all(runtime, x)
        m["accuracy"] = accuracy(logits, y)
        m["test_examples"] = int(len(y))
        if reference is not None:
            m["top1_agreement"] = top1_agreement(logits, reference)
        m["latency"] = []
        if target.format == "keras" and target.kind == "keras":
            complexity = keras_complexity(runtime.model)  # ("params" above counts pruned weights only)
            m["complexity"] = {"params": complexity["params"], "macs": complexity["macs"]}
        # Keras models still wrapped for training (pruning, QAT) are not deployment artifacts.
        devices = latency_devices(target.format, gpus) if target.kind in ("keras", target.format) else []
        return m, [self._job(target, device, threads, batch, x) for device in devices
                   for threads, batch in self.latency]

    def _sparse_kernels(self, ctx: RunContext, x, measured: dict) -> list:
        """Eligibility labels, the builtin-kernel A/B and the CSR reference for sparse artifacts."""
        sparse = [t for t in ctx.measurable() if (measured[t.name].get("sparsity") or 0) >= SPARSE_MIN]
        builtin = [t for t in sparse if t.format == "tflite"]
        if builtin:  # the dense counterpart the report's ratios are taken against
            builtin += [a for a in ctx.measurable() if a.format == "tflite" and a.parent == ctx.baseline
                        and not a.meta.get("sparse_storage") and a.meta.get("mode") in (None, "float32")
                        and a not in builtin]
        for target in sparse:
            m = measured[target.name]
            if target.format == "keras":
                m["sparse_kernel"] = csr_reference(target.path, warmup=min(self.warmup, 5),
                                                   min_seconds=min(self.min_seconds, 0.2))
            else:
                m["eligibility"] = eligibility(target.path, target.format)
        return [self._job(target, "cpu", 1, 1, x, resolver="builtin") for target in builtin]

    def _time(self, measured: dict, jobs: list) -> None:
        """Every latency row, timed in interleaved passes (see interleaved_latency): a slower
        stretch of the machine then falls on every artifact, not on the ones timed last."""
        stats = interleaved_latency({str(i): job[-1] for i, job in enumerate(jobs)}, passes=self.passes,
                                    warmup=self.warmup, min_runs=self.min_runs, min_seconds=self.min_seconds)
        for i, (name, row, _) in enumerate(jobs):
            measured[name]["latency"].append({**row, **stats[str(i)]})

    def _job(self, target: Artifact, device: str, threads: int, batch: int, x,
             resolver: str = "default") -> tuple[str, dict, object]:
        """(artifact name, the row's fixed fields, a function that opens the runtime and returns
        the call to time). The row's load_ms is the first opening's."""
        row = {"device": device, "threads": threads or os.cpu_count(), "batch": batch}
        sample = x[:batch]
        if len(sample) < batch:  # fewer test examples than the batch: repeat them
            sample = x[[i % len(x) for i in range(batch)]]

        def open_job():
            runtime = (open_runtime(target.path, "tflite", threads=threads, resolver=resolver)
                       if target.format == "tflite" else
                       open_runtime(target.path, target.format, threads=threads, device=device))
            if "runtime" not in row:
                options = getattr(runtime, "provider_options", None)
                row.update({"runtime": runtime.runtime,
                            "engine": getattr(runtime, "delegate", None) or getattr(runtime, "provider", None),
                            "load_ms": round(runtime.load_ms, 3),
                            **({"resolver": resolver} if target.format == "tflite" else {}),
                            **({"provider_options": options} if options else {})})
            return lambda: runtime.predict(sample)

        return target.name, row, open_job


def latency_devices(fmt: str, gpus: list[str]) -> list[str]:
    """Devices to time a file of format `fmt` on, given gpu_devices(): ONNX on the CPU, and on
    the GPU when onnxruntime has a CUDA or TensorRT provider; TFLite on the CPU only; Keras only
    on a TensorFlow GPU (on the CPU its exports are what gets deployed and timed)."""
    if fmt == "onnx":
        ort_gpu = any(g.split(":", 1)[-1] in ORT_GPU_PROVIDERS for g in gpus if g.startswith("onnxruntime:"))
        return ["cpu", "gpu"] if ort_gpu else ["cpu"]
    if fmt == "keras":
        return ["gpu"] if any(g.startswith("tensorflow:") for g in gpus) else []
    return ["cpu"]
