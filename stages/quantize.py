"""The quantize stage: int8 / float16 TFLite files, post-training or quantization-aware."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, load_keras, tfmot_scope
from slimpipe.pipeline.stage import StageResult, check_choice, check_count, check_fraction, require
from slimpipe.stages.finetune import FineTune
from slimpipe.stages.qat import QAT_MODES, float_note, preserved, quantize_apply

from slimpipe.benchmarks.complexity import keras_complexity
from slimpipe.benchmarks.sparsity import weight_sparsity
from slimpipe.exporters.stem import space_to_depth_stem
from slimpipe.exporters.tflite import SPARSE_LAYOUTS, export_tflite
from slimpipe.exporters.tflite_sparse import sparse_orders
from slimpipe.exporters.validate import agreement_note, check_parity

PTQ_MODES = ("dynamic", "int8", "float16")
MODES = PTQ_MODES + QAT_MODES
IO_TYPES = ("float", "int8")


@dataclass(frozen=True)
class Quantize(FineTune):
    """Write an 8-bit (or float16) TFLite file of the model in hand and check it against Keras.

    Post-training modes convert the float model: "dynamic" (int8 weights, float activations),
    "int8" (full integer, calibrated on `representative_samples` training inputs; `io` picks
    float or int8 model inputs/outputs), "float16" (float16 weights). Quantization-aware modes
    fine-tune a copy with fake quantization for `epochs`, save it (kind "keras:qat") and convert
    it to a full-integer file with float I/O: "qat" (tfmot quantize_model), "pqat" (keeps a pruned
    model's zeros), "cqat" (keeps a clustered model's shared values), "pcqat" (both).

    Every file must agree with the Keras model it was converted from (the float input, or the
    QAT model) on the top-1 class of `parity_samples` test inputs at least `min_agreement` of the
    time, else one ExportValidationError is raised. QAT files also record, under "vs_input",
    their agreement with the float input and both accuracies on those samples.
    The next stage gets this stage's input again, so several quantize steps can follow each other:

    >>> Quantize(mode="int8", io="int8").run(pruned, ctx)[0].name
    'pruned.int8.io-int8.tflite'
    >>> [a.name for a in Quantize(mode="pqat", epochs=1).run(pruned, ctx)]
    ['pruned.pqat', 'pruned.pqat.tflite']

    `sparse=True` also stores mostly-zero weights in TFLite's sparse format
    (Optimize.EXPERIMENTAL_SPARSITY); `sparse="both"` writes the file twice from the same model,
    with sparse storage (".sparse": smallest on disk) and without (often smaller by gzip: a
    mostly-zero int8 kernel's runs of zeros can compress better than the sparse format's index
    arrays; measure both). With "dynamic", sparse files failed to prepare under XNNPACK here;
    LiteRT then runs builtin kernels (recorded as the validation's "delegate"). Each sparse
    kernel is stored in the traversal order whose index arrays gzip smallest
    (`sparse_layout="smallest"`, outputs checked bit-identical) or as the converter wrote it
    (`"converter"`); the file's orders are recorded as `sparse_orders`.
    `strip_names=True` drops the tensor names and signature defs from the file (see
    `export_tflite(strip_names=True)`): ~2 KB smaller, same outputs; the report then names its
    tensors tensor<index>.
    `per_channel=False` gives each conv kernel one int8 scale instead of one per output channel
    (int8/dynamic: the converter's flag; QAT modes: tfmot's per-tensor weight quantizer, keeping
    pqat/cqat preservation): a clustered kernel's k shared values stay k int8 codes, so the file
    gzips smaller, at some accuracy risk (measured in the README).
    `space_to_depth_stem=True` (post-training modes) converts a rewrite of the model in which a
    stem "conv (stride 1), then 2x2 max pool" runs on a space-to-depth view of the input
    (`exporters.stem`): the same function, on kernels that suit a one-channel input far better
    (int8 CNN here: 10.5 -> 7.7 us per call). The file gets ".s2d" in its name and its own MACs
    and parameters in the report; a model without such a stem is converted as it is, with a note.
    """

    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = None

    min_epochs: ClassVar[int] = 1

    mode: str = "dynamic"
    # QAT starts from a trained model; 1e-4 (a tenth of a usual Adam rate) fine-tunes around
    # the fake-quantized weights without undoing the training.
    learning_rate: float = 1e-4
    representative_samples: int = 500
    io: str = "float"
    sparse: bool | str = False  # or "both"
    sparse_layout: str = "smallest"
    strip_names: bool = False
    per_channel: bool = True
    space_to_depth_stem: bool = False
    min_agreement: float = 0.97
    parity_samples: int = 256

    def __post_init__(self):
        super().__post_init__()
        n = self.name
        check_choice(n, "mode", self.mode, MODES)
        require(self.io in IO_TYPES, n, f"io must be 'float' or 'int8'. Received: io={self.io!r}")
        require(self.io == "float" or self.mode == "int8", n,
                f"io='int8' (integer model inputs/outputs) needs mode='int8'. Received: mode={self.mode!r}, "
                f"io={self.io!r}; fix: use mode='int8' or io='float'")
        check_count(n, "representative_samples", self.representative_samples, minimum=1)
        require(isinstance(self.sparse, bool) or self.sparse == "both", n,
                f"sparse must be true, false or 'both'. Received: sparse={self.sparse!r}")
        check_choice(n, "sparse_layout", self.sparse_layout, SPARSE_LAYOUTS)
        require(isinstance(self.strip_names, bool), n,
                f"strip_names must be true or false. Received: strip_names={self.strip_names!r}")
        require(isinstance(self.per_channel, bool), n,
                f"per_channel must be true or false. Received: per_channel={self.per_channel!r}")
        require(self.per_channel or self.mode != "float16", n,
                "per_channel=false needs an int8 mode: float16 has no scales. "
                f"Received: mode={self.mode!r}; fix: drop per_channel or use mode 'dynamic'/'int8'/a QAT mode")
        require(isinstance(self.space_to_depth_stem, bool), n,
                f"space_to_depth_stem must be true or false. Received: space_to_depth_stem={self.space_to_depth_stem!r}")
        require(not self.space_to_depth_stem or self.mode in PTQ_MODES, n,
                f"space_to_depth_stem rewrites the float model before conversion, so it needs a post-training "
                f"mode ({', '.join(PTQ_MODES)}). Received: mode={self.mode!r}; fix: drop space_to_depth_stem")
        check_fraction(n, "min_agreement", self.min_agreement, upper_open=False)
        check_count(n, "parity_samples", self.parity_samples, minimum=1)

    @property
    def trains(self) -> bool:
        """Only the quantization-aware modes fit a model (under --distribute, in the strategy)."""
        return self.mode in QAT_MODES

    def run(self, art: Artifact, ctx) -> StageResult:
        source = ctx.keras_model(art)
        _refuse_wrapped(source, art.name)
        result = StageResult()
        x = ctx.data.x_test[: self.parity_samples]
        reference = source.predict(x, verbose=0, batch_size=256)
        model, rewrite = source, None
        if self.space_to_depth_stem:
            rewritten, found = space_to_depth_stem(source, check_inputs=x[:8])
            if rewritten is None:
                result.note(f"quantize: space_to_depth_stem left {art.name} as it is: {found}")
            else:
                model, rewrite = rewritten, found
        stem = art.name + "." + self.mode + (".io-int8" if self.io == "int8" else "") \
            + (".per-tensor" if not self.per_channel else "")
        s2d = ".s2d" if rewrite else ""
        files = [(ctx.stage_path(f"{stem}{'.sparse' if sparse else ''}{s2d}.tflite"), sparse)
                 for sparse in self.storages]
        if self.mode in PTQ_MODES:
            # A rewritten stem's files run the rewritten conv: their own MACs and parameters.
            counted = keras_complexity(model) if rewrite else None
            for path, sparse in files:
                self._convert(model, path, ctx, sparse)
                meta = self._measure(path, reference, x, ctx, result, sparse)
                if rewrite:
                    meta.update(space_to_depth_stem=rewrite,
                                complexity={"params": counted["params"], "macs": counted["macs"]})
                result.artifacts.append(ctx.add_file(self, path, path.name, fmt="tflite", parent=art, meta=meta))
            if rewrite:
                result.note(f"quantize: {', '.join(p.name for p, _ in files)} compute{'s' if len(files) == 1 else ''} "
                            f"{rewrite['conv']} + {rewrite['pool']} on a space-to-depth view of the input (the "
                            f"same function; a {'x'.join(map(str, rewrite['new_kernel'][:2]))} conv to "
                            f"{rewrite['new_kernel'][3]} channels, then the max over 4 groups)")
            return result
        return self._qat_files(source, art, stem + (".sparse" if self.sparse is True else ""), files, reference, x,
                               ctx, result)

    @property
    def storages(self) -> tuple[bool, ...]:
        """The weight storages written: sparse (True) and/or dense (False)."""
        return (True, False) if self.sparse == "both" else (bool(self.sparse),)

    def _qat_files(self, source, art, stem: str, files, reference, x, ctx, result) -> StageResult:
        """The QAT model and its full-integer file(s) (float I/O: Optimize.DEFAULT on a QAT model
        uses its learned ranges)."""
        qat, qat_meta = self._train_qat(source, ctx, result)
        # The files are checked against the model they were converted from: fine-tuning itself
        # moves the predictions, so agreement with the float input is recorded next to the
        # accuracies, not enforced.
        qat_reference = qat.predict(x, verbose=0, batch_size=256)
        metas = []
        for path, sparse in files:
            export_tflite(qat, path, mode="dynamic", sparse=sparse, strip_names=self.strip_names,
                          per_channel=self.per_channel, sparse_layout=self.sparse_layout)
            meta = self._measure(path, qat_reference, x, ctx, result, sparse)  # raises before anything is recorded
            meta["vs_input"] = _versus_input(path, reference, x, ctx.data.y_test[: len(x)])
            if self.mode in ("pqat", "pcqat"):
                meta["sparsity"] = weight_sparsity(path, "tflite")["sparsity"]
            metas.append(meta)
        keras_art = ctx.save_model(self, qat, stem, parent=art, kind="keras:qat", meta=qat_meta)
        why = _reload_failure(keras_art.path)
        if why:  # tfmot cannot rebuild some QAT wrappers from their file (e.g. DepthwiseConv2D in pcqat)
            keras_art = dataclasses.replace(keras_art, meta={**keras_art.meta, "reloads": False})
            result.note(f"quantize {self.mode}: the QAT Keras model {keras_art.name} does not load back "
                        f"({why}); its file is kept for reference and not measured; its TFLite "
                        f"file{'s are' if len(files) > 1 else ' is'}")
        result.artifacts += [keras_art, *(ctx.add_file(self, path, path.name, fmt="tflite", parent=keras_art, meta=meta)
                                          for (path, _), meta in zip(files, metas))]
        return result

    # -- post-training -----------------------------------------------------------------------
    def _convert(self, model, path: Path, ctx, sparse: bool) -> None:
        if self.mode != "int8":
            export_tflite(model, path, mode=self.mode, sparse=sparse, per_channel=self.per_channel,
                          sparse_layout=self.sparse_layout, strip_names=self.strip_names)
            return
        rep = ctx.data.x_train[: self.representative_samples]
        export_tflite(model, path, mode="int8", sparse=sparse, representative=rep, io=self.io,
                      per_channel=self.per_channel, sparse_layout=self.sparse_layout,
                      strip_names=self.strip_names)

    # -- quantization-aware training ---------------------------------------------------------
    def check(self, model, data) -> list[str]:
        """QAT modes: which layers tfmot can quantize, known before anything trains."""
        if self.mode not in QAT_MODES:
            return []
        import tf_keras as keras

        with tfmot_scope():
            _, left = quantize_apply(keras.models.clone_model(model), self.mode, self.per_channel)
        return [float_note(self.mode, left)] if left else []

    def _train_qat(self, source, ctx, result: StageResult):
        import tensorflow_model_optimization as tfmot

        combine = tfmot.experimental.combine
        # quantize_annotate wraps the very layers it is given: annotate a copy.
        qat, left = quantize_apply(clone_with_weights(source), self.mode, self.per_channel)
        if left:
            result.note(float_note(self.mode, left))
        self.fit(qat, ctx)
        if self.mode in ("cqat", "pcqat"):
            # Drops the centroid/index variables (which also make the h5 unloadable) and keeps
            # the clustered kernels and the fake-quant ranges the converter needs.
            qat = combine.strip_clustering_cqat(qat)
        meta, notes = preserved(source, qat, self.mode)
        for text in notes:
            result.note(text)
        return qat, {**meta, "epochs": self.epochs}

    # -- checks ------------------------------------------------------------------------------
    def _measure(self, path: Path, reference, x, ctx, result: StageResult, sparse: bool) -> dict:
        check = check_parity(reference, path, "tflite", x)
        # A quantized file cannot match float logits to 1e-4: it passes on top-1 agreement.
        # atol/mismatched_samples stay in the record as information.
        check = {**check, "min_agreement": self.min_agreement,
                 "passed": check["top1_agreement"] >= self.min_agreement}
        failed = agreement_note(path.name, check, "quantize")
        if failed:
            result.note(failed)
        if check["delegate"] != "xnnpack":
            result.note(f"quantize: {path.name} runs on LiteRT's builtin kernels: XNNPACK did not take it"
                     + (" (sparse weight storage)" if sparse else ""))
        tensors = tflite_weight_tensors(path)
        meta = {"mode": self.mode, "io": self.io, "sparse_storage": sparse,
                "per_channel": self.per_channel,
                **({"names_stripped": True} if self.strip_names else {}),
                **({"sparse_layout": self.sparse_layout, "sparse_orders": sparse_orders(path)}
                   if sparse else {}),
                "weight_dtypes": sorted({t["dtype"] for t in tensors}), "weight_tensors": tensors,
                "validation": check}
        if self.mode == "int8":
            meta["representative_samples"] = min(self.representative_samples, len(ctx.data.x_train))
        return meta


def _reload_failure(path: Path) -> str | None:
    """None when tfmot loads the saved QAT model back, else the first line of why not."""
    try:
        load_keras(path)
    except Exception as exc:  # tfmot raises ValueError, TypeError, ... from its wrappers
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return None


def _versus_input(path: Path, input_logits, x, y) -> dict:
    """How the QAT file compares with the float model the stage was given."""
    from slimpipe.benchmarks.accuracy import accuracy, predict_all, top1_agreement
    from slimpipe.benchmarks.runtimes import open_runtime

    logits = predict_all(open_runtime(path, "tflite", threads=1), x)
    return {"top1_agreement": top1_agreement(logits, input_logits), "accuracy": accuracy(logits, y),
            "input_accuracy": accuracy(input_logits, y), "samples": int(len(x))}


def tflite_weight_tensors(path) -> list[dict]:
    """Constant tensors of rank >= 2 (conv/dense weights) in a .tflite file, from the interpreter:
    op inputs that no op produces and that are not model inputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = interp._get_ops_details()
    produced = {i for op in ops for i in op["outputs"]}
    produced |= {d["index"] for d in interp.get_input_details()}
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out, seen = [], set()
    for op in ops:
        for i in op["inputs"]:
            if i < 0 or i in produced or i in seen or len(details[i]["shape"]) < 2:
                continue
            seen.add(i)
            d = details[i]
            out.append({"name": d["name"] or f"tensor{i}", "op": op["op_name"], "dtype": np.dtype(d["dtype"]).name,
                        "shape": [int(s) for s in d["shape"]]})
    return out


def _refuse_wrapped(model, art_name: str) -> None:
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_annotate, quantize_layer
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    kinds = [
        (PruneLowMagnitude, "pruning", "strip them first: put 'strip' after 'prune'"),
        (ClusterWeights, "clustering", "strip them first: tfmot.clustering.keras.strip_clustering "
                                       "(the cluster stage strips its own output)"),
        ((tfmot.quantization.keras.QuantizeWrapper, quantize_layer.QuantizeLayer,
          quantize_annotate.QuantizeAnnotate), "quantization",
         "the model is already quantization-aware: quantize the float model it came from"),
    ]
    for cls, kind, fix in kinds:
        wrapped = [layer.name for layer in model.layers if isinstance(layer, cls)]
        if wrapped:
            raise ConfigError(f"stage 'quantize': expected a plain Keras model; received {art_name!r} "
                              f"with tfmot {kind} wrappers on {', '.join(wrapped)}: {fix}")


