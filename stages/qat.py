"""Quantization-aware training with tfmot: which layers get fake quantization, the schemes of
the QAT modes, and what the training kept (a pruned model's zeros, a clustered model's values).

>>> qat, left_float = quantize_apply(clone_with_weights(model), "pcqat", per_channel=False)

`qat_scheme(mode, per_channel=False)` is the one place slimpipe reaches into tfmot's internals:
tfmot gives Conv2D kernels a per-output-channel weight quantizer and offers no switch for
per-tensor in its prune/cluster-preserving schemes, so the scheme's registry is patched to hand
Conv2D kernels the per-tensor quantizer tfmot gives Dense kernels. tests/stages/test_qat.py pins
the tfmot internals this relies on.
"""
from __future__ import annotations

import re

import numpy as np

from slimpipe.benchmarks.sparsity import SPARSE_MIN

QAT_MODES = ("qat", "pqat", "cqat", "pcqat")
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
SPARSITY_SLACK = 0.01  # pqat/pcqat: a kernel may lose this much sparsity before the report says so
_UNSUPPORTED = re.compile(r"Layer (.+?):<class '([\w.]+)'> is not supported")
_UNSUPPORTED_CLASS = re.compile(r"unsupported layer <class '([\w.]+)'>")


def quantize_apply(model, mode: str, per_channel: bool = True) -> tuple[object, list[str]]:
    """The QAT model of `model` (which tfmot wraps in place: pass a copy) and the layers left
    float: every layer tfmot's scheme supports is quantized, and one it cannot quantize (a
    Resizing, a BatchNormalization that follows no conv) stays float, as tfmot's "quantize some
    layers" does. Layers are left out one failure at a time, so a model tfmot supports whole is
    annotated exactly as quantize_annotate_model does."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    qk, left = tfmot.quantization.keras, []
    while True:
        annotated = qk.quantize_annotate_model(model) if not left else keras.models.clone_model(
            model, clone_function=lambda l: l if l.name in left else qk.quantize_annotate_layer(l))
        try:
            return qk.quantize_apply(annotated, qat_scheme(mode, per_channel)), left
        except (RuntimeError, ValueError) as exc:
            found = _unsupported_layers(model, exc)
            if not found or set(found) <= set(left):
                raise
            left += [name for name in found if name not in left]


def float_note(mode: str, left: list[str]) -> str:
    return (f"quantize {mode}: {', '.join(left)} stay float in the QAT model and its file: "
            "tfmot's 8-bit quantization-aware training does not support them")


def preserved(source, qat, mode: str) -> tuple[dict, list[str]]:
    """Zeros and unique values per kernel before and after QAT (what pqat/cqat keep), and notes
    where the training lost what the mode should keep."""
    before, after = _kernels(source), _kernels(qat)
    layers = [{"name": name, "params": int(w.size),
               "zeros_in": int(np.sum(w == 0)), "zeros_out": int(np.sum(after[name] == 0)),
               "unique_in": int(np.unique(w).size), "unique_out": int(np.unique(after[name]).size)}
              for name, w in before.items() if name in after]
    params = max(sum(e["params"] for e in layers), 1)
    s_in = round(sum(e["zeros_in"] for e in layers) / params, 4)
    s_out = round(sum(e["zeros_out"] for e in layers) / params, 4)
    notes = []
    if mode in ("pqat", "pcqat"):
        if s_in == 0:
            notes.append(f"quantize {mode}: the input has no zero weights, so there was no sparsity "
                         "to preserve; put 'prune' and 'strip' before 'quantize'")
        elif s_out < s_in - SPARSITY_SLACK:
            notes.append(f"quantize {mode}: weight sparsity fell from {s_in:.3f} to {s_out:.3f} "
                         "during quantization-aware training")
    if mode in ("qat", "cqat") and s_in >= SPARSE_MIN and s_out < s_in - SPARSITY_SLACK:
        notes.append(f"quantize {mode}: weight sparsity fell from {s_in:.3f} to {s_out:.3f}; "
                     f"mode '{'pqat' if mode == 'qat' else 'pcqat'}' keeps a pruned model's zeros")
    if mode in ("cqat", "pcqat"):
        lost = [f"{e['name']} ({e['unique_in']} -> {e['unique_out']} values)"
                for e in layers if e["unique_out"] > e["unique_in"]]
        if lost:
            notes.append(f"quantize {mode}: {', '.join(lost)} did not keep their shared values; "
                         "tfmot keeps only kernels of <= 1024 distinct values: put 'cluster' before 'quantize'")
    return {"mode": mode, "sparsity_in": s_in, "sparsity_out": s_out, "layers": layers}, notes


def qat_scheme(mode: str, per_channel: bool = True):
    """The tfmot quantize scheme of a QAT mode. per_channel=False swaps the per-output-channel
    weight quantizer tfmot gives Conv2D kernels for the per-tensor one it gives Dense kernels
    (keeping its prune/cluster preservation), so the converted file has one scale per kernel."""
    import tensorflow_model_optimization as tfmot

    combine = tfmot.experimental.combine
    if mode == "qat":
        return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme(
            disable_per_axis=not per_channel)
    scheme = {"pqat": combine.Default8BitPrunePreserveQuantizeScheme,
              "cqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
              "pcqat": lambda: combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
              }[mode]()
    if not per_channel:
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry as registries)

        registry = scheme.get_quantize_registry()
        per_layer = registry.get_quantize_config

        def per_tensor_config(layer):
            config = per_layer(layer)
            if not getattr(getattr(config, "weight_quantizer", None), "per_axis", False):
                return config
            # The Dense layers' config class, so that a saved model loads per-tensor again.
            flat = registries.Default8BitQuantizeConfig(config.weight_attrs, config.activation_attrs,
                                                        config.quantize_output)
            flat.weight_quantizer = _per_tensor_quantizer(mode)
            return flat

        registry.get_quantize_config = per_tensor_config
        scheme.get_quantize_registry = lambda: registry
    return scheme


def _per_tensor_quantizer(mode: str):
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        cluster_preserve_quantize_registry as cluster)
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as prune)

    if mode == "pqat":
        return prune.PrunePreserveDefault8BitWeightsQuantizer()
    return cluster.ClusterPreserveDefault8BitWeightsQuantizer(preserve_sparsity=mode == "pcqat")


def _kernels(model) -> dict[str, np.ndarray]:
    """Each layer's kernel by layer name; QAT wrappers report their inner layer's."""
    out = {}
    for layer in model.layers:
        name = getattr(getattr(layer, "layer", None), "name", layer.name)
        for w in layer.weights:
            if w.name.split(":")[0].rsplit("/", 1)[-1] in KERNELS and w.shape.rank >= 2:
                out[name] = w.numpy()
                break
    return out


def _unsupported_layers(model, exc: Exception) -> list[str]:
    """The layers a tfmot 'not supported' error is about: by name (quantize_apply names one) or
    by class (a registry names only the class)."""
    found = _UNSUPPORTED.search(str(exc))
    if found:
        return [found.group(1)]
    found = _UNSUPPORTED_CLASS.search(str(exc))
    if found:
        cls = found.group(1).rsplit(".", 1)[-1]
        return [layer.name for layer in model.layers if type(layer).__name__ == cls]
    return []
