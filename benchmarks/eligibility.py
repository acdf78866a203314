"""Which layers of an exported file can turn their zeros into speed, and which only into size.

>>> eligibility("out/pruned.sparse.tflite", "tflite")["layers"][0]
{'name': 'sequential/fc1/MatMul', 'op': 'FULLY_CONNECTED', 'weights_dtype': 'float32',
 'sparsity': 0.8, 'sparse_storage': True, 'densify': True, 'xnnpack_sparse_subgraph': False,
 'sparse_fc_block': None, 'label': 'size-only', 'reason': 'stored sparse, but a DENSIFY op ...'}

Labels: "latency-eligible" (a kernel in this runtime skips the zeros), "size-only" (at least
30% zeros or stored sparse, but every kernel that can run the layer multiplies the zeros) and
"dense". The rules are read from the runtimes' sources, not guessed:

- LiteRT builtin FULLY_CONNECTED (kernels/fully_connected.cc) runs a sparse kernel only when its
  weight tensor itself is sparse (no DENSIFY in front): float32 random or 1x4 blocks, int8
  1x16 blocks. The converter (dense_to_sparse.cc) keeps weights sparse only in a block shape
  the op supports; any other pattern at >= 30% zeros is stored sparse behind a DENSIFY op,
  which rebuilds the dense matrix at load time. XNNPACK does not take sparse FC weights.
  Keras kernels are [in, out] and TFLite's [out, in]: tfmot's block_size=(4, 1) gives 1x4.
- XNNPACK sparse inference (delegates/xnnpack/README.md, XNNPACK's NCHW rewrite): a subgraph
  that starts with a 3x3 stride-2 CONV_2D with 3 input channels and padding 1 on each side
  (VALID after a PAD), holds only 1x1 stride-1 CONV_2D, 3x3/5x5 DEPTHWISE_CONV_2D, ADD/MUL of
  4-D tensors, RESIZE_BILINEAR and unary elementwise ops, and ends in a spatial MEAN (or
  DEPTH_TO_SPACE); at least 2/3 of its 1x1 filter weights are zeros; float32/float16 weights
  only (int8 weights get no sparse path); and the file stores weights sparse (DENSIFY ops are
  what turns the delegate's sparse flag on). Only its 1x1 convs run sparse kernels. A stride-1
  SAME depthwise conv counts as padding 1 on each side, as tfmot's PruneForLatencyOnXNNPack
  does. This is a static reading of the rules: on an x86 machine with the ai_edge_litert wheel,
  a 90%-sparse graph that meets them ran no faster under XNNPACK than its dense twin, so the
  benchmark's measured ratio, not the label, says whether the sparse path ran.
- onnxruntime has no sparse kernels for Conv/Gemm/MatMul (microsoft/onnxruntime#2121).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimpipe.benchmarks.sparsity import (SPARSE_MIN, buffer_bytes, tensor_name, tflite_model,
                                          weight_sparsity)
from slimpipe.pipeline.errors import ConfigError

LABELS = ("latency-eligible", "size-only", "dense")
XNNPACK_MIN_ZEROS = 2 / 3
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
FC_BLOCKS = {"float32": ("random", "1x4"), "int8": ("1x16",)}  # builtin sparse FC kernels
XNN_UNARY = {"ABS", "CEIL", "ELU", "FLOOR", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "NEG", "RELU",
             "RELU6", "RELU_N1_TO_1", "ROUND", "SQUARE"}
ONNX_WEIGHT = {"Conv": 1, "ConvInteger": 1, "Gemm": 1, "MatMul": 1, "MatMulInteger": 1,
               "QLinearConv": 3, "QLinearMatMul": 3}
ORT_REASON = "onnxruntime has no sparse Conv/Gemm/MatMul kernels (microsoft/onnxruntime#2121)"


def eligibility(path, fmt: str) -> dict[str, Any]:
    """Per-layer labels and a summary for a .tflite or .onnx file (keras: not applicable)."""
    path = Path(path)
    if fmt not in ("keras", "tflite", "onnx"):
        raise ConfigError(f"eligibility: fmt must be 'keras', 'tflite' or 'onnx'. Received: fmt={fmt!r}")
    if not path.exists():
        raise ConfigError(f"eligibility: {path} does not exist; fix: check the path")
    if fmt == "keras":
        return {"layers": [], "summary": {"applicable": False, "note": "a Keras file is not "
                "deployed; eligibility is judged on the exported .tflite and .onnx files"}}
    zeros = {l["name"]: l["sparsity"] for l in weight_sparsity(path, fmt)["layers"]}
    layers, extra = (_tflite(path, zeros) if fmt == "tflite" else _onnx(path, zeros))
    summary = {"applicable": True, **{label: sum(l["label"] == label for l in layers)
                                      for label in LABELS}, **extra}
    return {"layers": layers, "summary": summary}


def _row(name, op, dtype, sparsity, stored, densify, subgraph, block, label, reason):
    return {"name": name, "op": op, "weights_dtype": dtype, "sparsity": sparsity,
            "sparse_storage": stored, "densify": densify, "xnnpack_sparse_subgraph": subgraph,
            "sparse_fc_block": block, "label": label, "reason": reason}


# -- tflite --------------------------------------------------------------------------------
class _Graph:
    """Operators, tensors and producers of subgraph 0 of a .tflite flatbuffer."""

    def __init__(self, path: Path):
        schema, model, data = tflite_model(path)
        self.schema, g = schema, model.Subgraphs(0)
        builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.tensors = []
        for t in range(g.TensorsLength()):
            ten = g.Tensors(t)
            raw = buffer_bytes(model, data, ten.Buffer()) if ten.Buffer() else b""
            self.tensors.append({
                "name": tensor_name(ten, t), "dtype": types.get(ten.Type(), "?"),
                "shape": [int(d) for d in ten.ShapeAsNumpy()] if ten.ShapeLength() else [],
                "raw": raw, "block": _block(ten.Sparsity())})
        self.ops = []
        for o in range(g.OperatorsLength()):
            op = g.Operators(o)
            oc = model.OperatorCodes(op.OpcodeIndex())
            self.ops.append({"op": builtin.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?"),
                             "in": [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else [],
                             "out": [int(i) for i in op.OutputsAsNumpy()], "raw": op})
        self.producer = {t: i for i, op in enumerate(self.ops) for t in op["out"]}
        self.consumers: dict[int, list[int]] = {}
        for i, op in enumerate(self.ops):
            for t in op["in"]:
                self.consumers.setdefault(t, []).append(i)
        self.outputs = set(int(i) for i in g.OutputsAsNumpy())

    def const(self, t: int) -> bool:
        return t >= 0 and bool(self.tensors[t]["raw"])

    def array(self, t: int) -> np.ndarray:
        dtype = {"int32": np.int32, "int64": np.int64}.get(self.tensors[t]["dtype"], np.float32)
        return np.frombuffer(self.tensors[t]["raw"], dtype=dtype)

    def options(self, i: int, cls: str):
        table = self.ops[i]["raw"].BuiltinOptions()
        opts = getattr(self.schema, cls)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def weights(self, i: int) -> tuple[int, bool]:
        """The constant tensor behind op i's weight input, and whether a DENSIFY lies between."""
        t, densify = self.ops[i]["in"][WEIGHT_OPS[self.ops[i]["op"]]], False
        while t in self.producer and self.ops[self.producer[t]]["op"] in ("DENSIFY", "DEQUANTIZE"):
            densify |= self.ops[self.producer[t]]["op"] == "DENSIFY"
            t = self.ops[self.producer[t]]["in"][0]
        return t, densify


def _block(sp) -> str | None:
    """"random", "1x4", ... for a sparse tensor; None for a dense one."""
    if sp is None:
        return None
    dims = [sp.DimMetadata(d).DenseSize() for d in range(sp.DimMetadataLength())]
    rank = sp.TraversalOrderLength() - sp.BlockMapLength()
    if not sp.BlockMapLength():
        return "random"
    size = [1] * rank
    for k, axis in enumerate(sp.BlockMapAsNumpy()):
        size[int(axis)] = dims[rank + k]
    return "x".join(str(s) for s in size)


def _xnn_role(g: _Graph, i: int) -> tuple[str | None, str]:
    """("stem" | "body" | "end" | None, why not) for op i under XNNPACK's sparse rules."""
    op, ins = g.ops[i]["op"], g.ops[i]["in"]
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = g.options(i, "Conv2DOptions" if op == "CONV_2D" else "DepthwiseConv2DOptions")
        kh, kw = g.tensors[g.weights(i)[0]]["shape"][1:3]
        stride, dil = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
        pad = _pad(g, ins[0]) if o.Padding() == g.schema.Padding.VALID else None
        if dil != (1, 1):
            return None, f"{op} with dilation"
        if op == "CONV_2D" and (kh, kw) == (1, 1):
            return ("body", "") if stride == (1, 1) else (None, "strided 1x1 CONV_2D")
        if op == "CONV_2D":
            cin = g.tensors[ins[0]]["shape"][-1]
            ok = (kh, kw) == (3, 3) and stride == (2, 2) and cin == 3 and pad == 1
            return ("stem", "") if ok else (None, f"{kh}x{kw} CONV_2D (only a 3x3 stride-2 stem "
                                                  f"with 3 input channels and padding 1 qualifies)")
        same_ok = o.Padding() == g.schema.Padding.SAME and stride == (1, 1)
        if kh == kw and kh in (3, 5) and stride[0] == stride[1] in (1, 2) and (
                same_ok or pad == kh // 2):
            return "body", ""
        return None, f"{kh}x{kw} stride-{stride[0]} DEPTHWISE_CONV_2D with this padding"
    if op in XNN_UNARY or op in ("PAD", "RESIZE_BILINEAR"):
        return "body", ""
    if op in ("ADD", "MUL"):
        ok = all(len(g.tensors[t]["shape"]) == 4 and (not g.const(t) or sum(
            d != 1 for d in g.tensors[t]["shape"]) <= 1) for t in ins)
        return ("body", "") if ok else (None, f"{op} of non-4-D or non-vector constant inputs")
    if op == "MEAN" and len(g.tensors[ins[0]]["shape"]) == 4 and g.const(ins[1]) and sorted(
            int(a) % 4 for a in g.array(ins[1])) == [1, 2]:
        return "end", ""
    if op == "DEPTH_TO_SPACE":
        return "end", ""
    return None, op


def _pad(g: _Graph, t: int) -> int | None:
    """The symmetric spatial padding a PAD op in front of tensor t adds, else None (0: none)."""
    if t not in g.producer:
        return 0
    p = g.ops[g.producer[t]]
    if p["op"] != "PAD" or not g.const(p["in"][1]):
        return 0
    pads = g.array(p["in"][1]).reshape(-1, 2)
    spatial = set(pads[1:3].ravel().tolist()) if len(pads) == 4 else {-1}
    return spatial.pop() if len(spatial) == 1 and not pads[0].any() and not pads[3].any() else None


def _is_weight(g: _Graph, t: int) -> bool:
    return t in g.producer and g.ops[g.producer[t]]["op"] in ("DENSIFY", "DEQUANTIZE")


def _xnn_subgraphs(g: _Graph, zeros: dict) -> tuple[dict[int, int], list[dict]]:
    """{op index: subgraph number} for ops in a subgraph that passes every rule, and a record
    of every candidate subgraph (stem, ops, 1x1 zeros, ok, reason)."""
    member, found = {}, []
    for stem in (i for i in range(len(g.ops)) if _xnn_role(g, i)[0] == "stem"):
        body, ends, todo, why = {stem}, set(), [c for t in g.ops[stem]["out"]
                                               for c in g.consumers.get(t, [])], ""
        while todo and not why:
            i = todo.pop()
            if i in body or i in ends:
                continue
            role, why = _xnn_role(g, i)
            if role == "end":
                ends.add(i)
            elif role == "body":
                body.add(i)
                todo += [c for t in g.ops[i]["out"] for c in g.consumers.get(t, [])]
                why = "its output leaves the graph" if set(g.ops[i]["out"]) & g.outputs else ""
            else:
                why = f"it reaches {why}, which XNNPACK cannot run in sparse (NCHW) layout"
        for i in (body | ends) - {stem}:
            outside = [t for t in g.ops[i]["in"] if t >= 0 and not g.const(t)
                       and not _is_weight(g, t) and g.producer.get(t) not in body]
            if outside and not why:
                why = f"{g.ops[i]['op']} takes an input from outside the subgraph"
        why = why or ("" if ends else "it ends in no spatial MEAN")
        convs = [g.weights(i)[0] for i in body if g.ops[i]["op"] == "CONV_2D" and i != stem]
        sizes = [int(np.prod(g.tensors[t]["shape"])) for t in convs]
        z = sum(zeros.get(g.tensors[t]["name"], 0.0) * n for t, n in zip(convs, sizes))
        frac = z / sum(sizes) if sizes else 0.0
        dtypes = {g.tensors[g.weights(i)[0]]["dtype"] for i in body if g.ops[i]["op"] in WEIGHT_OPS}
        if not why and dtypes - {"float32", "float16"}:
            why = "its weights are int8: XNNPACK's sparse inference is float32/float16 only"
        if not why and frac < XNNPACK_MIN_ZEROS:
            why = f"its 1x1 convs are {frac:.0%} zeros, under XNNPACK's 2/3"
        found.append({"stem": g.tensors[g.ops[stem]["out"][0]]["name"], "ops": len(body | ends),
                      "zeros_1x1": frac, "ok": not why, "reason": why or "all rules hold"})
        if not why:
            member.update({i: len(found) - 1 for i in body})
    return member, found


def _tflite(path: Path, zeros: dict) -> tuple[list[dict], dict]:
    g = _Graph(path)
    member, subgraphs = _xnn_subgraphs(g, zeros)
    has_densify = any(op["op"] == "DENSIFY" for op in g.ops)
    layers = []
    for i, op in enumerate(g.ops):
        if op["op"] not in WEIGHT_OPS or not g.const(g.weights(i)[0]):
            continue
        t, densify = g.weights(i)
        ten = g.tensors[t]
        dtype, stored, block = ten["dtype"], ten["block"] is not None, ten["block"]
        sp = zeros.get(ten["name"], 0.0)
        in_xnn = i in member
        fc_block = block if op["op"] == "FULLY_CONNECTED" and stored and not densify else None
        one_by_one = op["op"] == "CONV_2D" and ten["shape"][1:3] == [1, 1]
        if not stored and sp < SPARSE_MIN:
            label, why = "dense", (f"{sp:.0%} zeros: below the {SPARSE_MIN:.0%} at which "
                                   "sparsity is stored or used")
        elif fc_block and fc_block in FC_BLOCKS.get(dtype, ()):
            label, why = "latency-eligible", (
                f"builtin FULLY_CONNECTED sparse kernel ({fc_block} blocks, {dtype}) skips the zero "
                f"blocks; XNNPACK leaves sparse FC weights to it")
        elif fc_block:
            label = "size-only"
            why = f"stored sparse in {fc_block} blocks, which no {dtype} FC kernel reads"
        elif in_xnn and one_by_one and has_densify:
            label, why = "latency-eligible", ("1x1 conv in a subgraph that meets XNNPACK's sparse-"
                                              "inference rules (sparse x dense SpMM)")
        elif in_xnn and one_by_one:
            label, why = "size-only", ("in an XNNPACK sparse-eligible subgraph, but the file stores "
                                       "weights dense; export with sparse storage to turn it on")
        elif in_xnn:
            label, why = "size-only", "in the XNNPACK sparse subgraph, but only its 1x1 convs run sparse"
        else:
            label = "size-only"
            why = ("stored sparse, but a DENSIFY op rebuilds the dense weights at load time and a "
                   "dense kernel runs" if densify else
                   "stored dense: the dense kernel multiplies the zeros")
            n = 16 if dtype == "int8" else 4
            if op["op"] == "FULLY_CONNECTED" and not stored:
                why += f" (the builtin sparse FC kernel needs sparse storage and 1x{n} blocks)"
            elif op["op"] == "FULLY_CONNECTED":
                why += (f" (the builtin sparse FC kernel needs 1x{n} blocks, which the converter keeps "
                        f"sparse: prune Dense with block_size=({n}, 1), as Keras kernels are [in, out])")
            elif dtype == "int8":
                why += "; int8 weights get no XNNPACK sparse path"
            else:
                why += "; not in an XNNPACK sparse-eligible subgraph" + next(
                    (f" ({s['reason']})" for s in subgraphs if not s["ok"]),
                    " (it has no 3x3 stride-2 CONV_2D stem with 3 input channels, padding 1)")
        layers.append(_row(ten["name"], op["op"], dtype, sp, stored, densify, in_xnn, fc_block,
                           label, why))
    return layers, {"densify_ops": sum(op["op"] == "DENSIFY" for op in g.ops),
                    "xnnpack_subgraphs": subgraphs}


# -- onnx ----------------------------------------------------------------------------------
def _onnx(path: Path, zeros: dict) -> tuple[list[dict], dict]:
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    sparse = {s.values.name for s in graph.sparse_initializer}
    producer = {o: n for n in graph.node for o in n.output}
    layers = []
    for node in graph.node:
        if node.op_type not in ONNX_WEIGHT or len(node.input) <= ONNX_WEIGHT[node.op_type]:
            continue
        name = node.input[ONNX_WEIGHT[node.op_type]]
        if node.op_type == "MatMul" and name not in inits and node.input[0] in inits:
            name = node.input[0]
        if name in producer and producer[name].op_type == "DequantizeLinear":
            name = producer[name].input[0]
        if name not in inits and name not in sparse:
            continue
        dtype = (onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type).name
                 if name in inits else "float32")
        sp = zeros.get(name, 0.0)
        stored = name in sparse
        label, why = (("size-only", ORT_REASON + ": the CPU provider multiplies the zeros")
                      if stored or sp >= SPARSE_MIN else
                      ("dense", f"{sp:.0%} zeros: below the {SPARSE_MIN:.0%} at which sparsity is used"))
        layers.append(_row(name, node.op_type, dtype, sp, stored, None, False, None, label, why))
    return layers, {"note": ORT_REASON}
