"""Speed comparisons computed from the measurements of a report: each sparse export against
its dense counterpart (at every latency point the two share), the dense and sparse kernels it
could run on, and each int8 TFLite file against the float32 file of the same model. Each entry
carries one sentence for people that says what the numbers mean.

>>> sparsity_and_speed(report)[0]["sentence"]
'pruned.tflite has 80% zero weights and runs at 1.02x the speed of trained.tflite on ...'
"""
from __future__ import annotations

from typing import Any

from slimpipe.pipeline.rows import (SAME_SPEED, fmt_x, is_sparse, latency_at, point_1x1,
                                    precision, ratio_of, speed_reference_for, speedup)


# -- sparse files against dense ones ---------------------------------------------------------
def sparsity_and_speed(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each sparse exported artifact: measured speed against its dense counterpart, at
    every latency point the two share."""
    rows, out = report["artifacts"], []
    for row in rows:
        ref, same = speed_reference_for(row, rows, report["baseline"])
        if row["format"] == "keras" or ref is None or ref is row or not is_sparse(row):
            continue
        for point in row["latency"]:
            ratio = speedup(row, ref, point)
            if ratio is None:
                continue
            out.append({
                "artifact": row["name"], "reference": ref["name"], "sparsity": row["sparsity"],
                "sparse_storage": row["sparse_storage"], "runtime": point["runtime"],
                "engine": point.get("engine"), "resolver": point.get("resolver"),
                "device": point["device"], "same_precision": same,
                "threads": point["threads"], "batch": point["batch"], "speedup": ratio,
                "bytes_ratio": ratio_of(ref["bytes"], row["bytes"]),
                "gzip_ratio": ratio_of(ref["gzip_bytes"], row["gzip_bytes"]),
                "sentence": _sentence(row, ref, point, ratio, same),
            })
    return out


def _where(point) -> str:
    engine = point.get("engine") or "default"
    if point.get("resolver") == "builtin":
        engine = "builtin kernels, XNNPACK off"
    return (f"{point['runtime']} ({engine}, {point['threads']} "
            f"thread{'s' if point['threads'] != 1 else ''}, batch {point['batch']})")


def _sentence(row, ref, point, ratio, same_precision: bool = True) -> str:
    head = (f"{row['name']} has {row['sparsity']:.0%} zero weights and runs at {ratio:.2f}x the "
            f"speed of {ref['name']} on {_where(point)}")
    if not same_precision:
        verdict = (f"not a measure of the zeros: it is {precision(row)} and {ref['name']} is "
                   f"{precision(ref)}, and the run has no dense {precision(row)} file of the "
                   f"baseline, so precision and sparsity both changed the kernels")
    elif abs(ratio - 1.0) <= SAME_SPEED:
        verdict = "no speedup: these kernels multiply the zeros like any other weight"
    elif not _latency_eligible(row):
        verdict = (f"{'faster' if ratio > 1.0 else 'slower'}, yet no layer of it is "
                   "latency-eligible, so the same dense kernels ran on the same shapes: this is "
                   "run-to-run variation, not the zeros (the latency table gives each cv)")
    elif ratio > 1.0:
        verdict = "faster: this runtime skipped work for the zeros here"
    else:
        verdict = "slower: the sparse kernel costs more here than the zeros save"
    storage = ("its weights are stored sparse, so the file itself is smaller"
               if row["sparse_storage"] else "its weights are stored dense, so the zeros only "
               "pay off in size after compression (gzip)")
    return f"{head}: {verdict}; {storage}."


def _latency_eligible(row) -> bool:
    """Whether a layer of the file can run on a sparse kernel (where eligibility was analysed;
    without an analysis, assume it can, rather than call a measured difference noise)."""
    layers = (row.get("eligibility") or {}).get("layers")
    return layers is None or any(l.get("label") == "latency-eligible" for l in layers)


def speed_summary(entries: list[dict[str, Any]]) -> list[str]:
    """One line per artifact for people: the sentence at its first measured point (1 thread,
    batch 1 on the default engine comes first) and the ratios at its other points."""
    lines, by_artifact = [], {}
    for e in entries:
        by_artifact.setdefault(e.get("artifact"), []).append(e)
    for group in by_artifact.values():
        first = next((e for e in group if e.get("threads") == 1 and e.get("batch") == 1
                      and (e.get("resolver") or "default") == "default"), group[0])
        others = [f"{_where(e)} {e['speedup']:.2f}x" for e in group if e is not first
                  and {"runtime", "threads", "batch", "speedup"} <= e.keys()]
        lines.append(first["sentence"] + (f" Other points: {'; '.join(others)}." if others else ""))
    return lines


SOURCES = {"default": "the runtime's default engine", "builtin": "LiteRT's builtin kernels, "
           "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "xnnpack": "LiteRT's XNNPACK sparse inference",
           "csr-reference": "a CSR reference kernel (scipy, 1 thread, batch 1) on the pruned "
           "Keras weights"}


def sparse_kernels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each sparse exported artifact: its dense-kernel ratio, its sparse-kernel ratio (with
    what measured it) and its per-layer eligibility labels, plus one sentence built from them.

    All ratios are speeds against the dense baseline in the same format at 1 thread, batch 1.
    The sparse kernel is the one the labels say this file can use: the builtin resolver when a
    sparse FULLY_CONNECTED is latency-eligible (the dense-kernel ratio is then that of the same
    weights stored dense, the sibling export), XNNPACK when a 1x1 conv is (the builtin run is
    then the dense-kernel one); with no latency-eligible layer the runtime has no sparse path
    for the file, and the CSR reference on the parent Keras model's weights stands in.
    """
    rows, out = report["artifacts"], []
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        ref, same = speed_reference_for(row, rows, report["baseline"])
        if row["format"] == "keras" or ref is None or ref is row or not is_sparse(row):
            continue
        layers = (row.get("eligibility") or {}).get("layers") or []
        default, default_engine = _ratio_at(row, ref, "default")
        builtin, _ = _ratio_at(row, ref, "builtin")
        parent = (by_name.get(row["parent"]) or {}).get("sparse_kernel") or {}
        eligible = [l for l in layers if l["label"] == "latency-eligible"]
        dense_row = row
        if any(l["sparse_fc_block"] for l in eligible):
            # XNNPACK leaves sparse FC weights to the builtin kernel, so both engines run it
            # sparse on this file: the dense kernels ran on the same weights stored dense.
            sparse_src, sparse = "builtin", builtin
            dense_row = next((r for r in rows if r is not row and r["parent"] == row["parent"]
                              and r["format"] == row["format"] and not r["sparse_storage"]
                              and r["mode"] == row["mode"]), row)
            dense_src = "builtin" if _ratio_at(dense_row, ref, "builtin")[0] else "default"
            dense, engine = ((None, None) if dense_row is row
                             else _ratio_at(dense_row, ref, dense_src))
        elif eligible:
            sparse_src, sparse, dense_src = "xnnpack", default, "builtin"
            dense, engine = builtin, "builtin"
        else:
            sparse_src, sparse, dense_src = "csr-reference", parent.get("ratio"), "default"
            dense, engine = default, default_engine
        entry = {"artifact": row["name"], "reference": ref["name"], "sparsity": row["sparsity"],
                 "same_precision": same, "precision": precision(row),
                 "reference_precision": precision(ref),
                 "dense_kernel_ratio": dense, "dense_kernel_source": dense_src,
                 "dense_kernel_artifact": dense_row["name"], "dense_kernel_engine": engine,
                 "sparse_kernel_ratio": sparse, "sparse_kernel_source": sparse_src,
                 "default_ratio": default, "builtin_ratio": builtin,
                 "csr_reference_ratio": parent.get("ratio"), "csr_flop_ratio": parent.get("flop_ratio"),
                 "labels": {k: sum(l["label"] == k for l in layers)
                            for k in ("latency-eligible", "size-only", "dense")},
                 "layers": [{k: l[k] for k in ("name", "op", "weights_dtype", "sparsity",
                                               "sparse_storage", "densify", "label", "reason")}
                            for l in layers]}
        entry["sentence"] = _kernel_sentence(entry)
        out.append(entry)
    return out


def _ratio_at(row, ref, resolver: str) -> tuple[float | None, str | None]:
    """Speed against ref at 1 thread, batch 1 on the CPU with this LiteRT resolver (any other
    runtime: its only row), and the engine that ran it."""
    point = point_1x1(row) if resolver == "default" else latency_at(row, "litert", 1, 1, resolver=resolver)
    return (speedup(row, ref, point), point.get("engine")) if point else (None, None)


def _kernel_sentence(e: dict[str, Any]) -> str:
    lab, n = e["labels"], sum(e["labels"].values())
    dense_where = (e["dense_kernel_engine"] or "the default engine"
                   if e["dense_kernel_source"] == "default" else SOURCES[e["dense_kernel_source"]])
    if e["dense_kernel_artifact"] != e["artifact"]:
        dense_where += f", on {e['dense_kernel_artifact']}: the same weights stored dense"
    head = (f"{e['artifact']} ({e['sparsity']:.0%} zeros): {lab['latency-eligible']} of {n} weight "
            f"layers latency-eligible, {lab['size-only']} size-only; with dense kernels "
            f"({dense_where}) it runs at {fmt_x(e['dense_kernel_ratio'])} the speed of {e['reference']}")
    if not e.get("same_precision", True):
        head += (f" ({e['precision']} against {e['reference_precision']}: the ratios mix "
                 f"precision and sparsity, the run has no dense {e['precision']} baseline file)")
    sparse = e["sparse_kernel_ratio"]
    if e["sparse_kernel_source"] == "csr-reference":
        tail = ("; this runtime has no sparse kernel for any of its layers, so its zeros buy size "
                f"only; {SOURCES['csr-reference']} measured {fmt_x(sparse)} on the weight products "
                f"(ideal, by multiply-adds: {fmt_x(e['csr_flop_ratio'])})")
    else:
        tail = f", and with {SOURCES[e['sparse_kernel_source']]} at {fmt_x(sparse)}"
        if e["csr_reference_ratio"] is not None:
            tail += f" ({SOURCES['csr-reference']}: {fmt_x(e['csr_reference_ratio'])})"
    if sparse is None:
        verdict = "the sparse kernel was not measured"
    elif e["sparse_kernel_source"] == "xnnpack" and sparse <= 1 + SAME_SPEED:
        verdict = ("XNNPACK's sparse inference bought no speed: the file meets its rules, but this "
                   "LiteRT build or CPU may not take its sparse path")
    elif sparse > 1 + SAME_SPEED:
        verdict = "a sparse kernel pays off in speed here"
    elif sparse >= 1 - SAME_SPEED:
        verdict = "even a sparse kernel gains nothing at this size and sparsity"
    else:
        verdict = "the sparse kernel is slower than the dense one at this size and sparsity"
    return f"{head}{tail}: {verdict}."


# -- int8 against float, and the CPU features behind it ---------------------------------------
VNNI = ("avx512_vnni", "avx512vnni", "avx_vnni")


def isa_summary(isa) -> str:
    """One line: the ISA extensions that decide how fast float and int8 kernels can be."""
    if isa is None:
        return "ISA: unknown"
    isa = set(isa)
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    return (f"ISA for inference kernels: AVX2 {yes('avx2' in isa)}, AVX-512 {yes('avx512f' in isa)}, "
            f"VNNI (8-bit dot products) {yes(bool(isa & set(VNNI)))}, FMA {yes('fma' in isa)}"
            + (", NEON yes" if isa & {"neon", "asimd"} else ""))


def int8_vs_float(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each int8 TFLite file against the float32 TFLite file of the same Keras model, measured
    on LiteRT at 1 thread, batch 1, with a sentence that says why when int8 was slower."""
    rows, out = report["artifacts"], []
    isa = set(report.get("environment", {}).get("isa") or [])
    for row in rows:
        if row["format"] != "tflite" or not str(row.get("mode") or "").startswith("int8"):
            continue
        ref = next((r for r in rows if r["parent"] == row["parent"] and r["format"] == "tflite"
                    and r["mode"] in (None, "float32") and not r["sparse_storage"]), None)
        mine, theirs = point_1x1(row), ref and point_1x1(ref)
        if not mine or not theirs or not mine.get("p50_ms"):
            continue
        ratio = theirs["p50_ms"] / mine["p50_ms"]
        head = (f"int8 `{row['name']}` ran at {ratio:.2f}x the speed of float32 `{ref['name']}` "
                f"({mine['p50_ms']:.3f} against {theirs['p50_ms']:.3f} ms p50, LiteRT "
                f"{mine.get('engine') or 'default'}, 1 thread, batch 1)")
        if ratio >= 1.0:
            why = "int8 paid off on this CPU"
        else:
            causes = []
            if mine.get("engine") == "builtin":
                causes.append("the int8 file ran on LiteRT's builtin kernels, not XNNPACK")
            if not isa & set(VNNI):
                causes.append("this CPU has no VNNI, so each 8-bit multiply-add takes several "
                              "instructions (widen to 16 bits, multiply, add pairs) where float "
                              "needs one FMA")
            if (row.get("config") or {}).get("io") == "int8":
                causes.append("its inputs and outputs are int8, so the caller converts them: the "
                              "timed call includes that conversion in numpy, as an application's "
                              "would, a fixed cost that a small model does not amortize")
            else:
                causes.append("the file quantizes its float input and dequantizes its output on "
                              "every call, a fixed cost that a small model does not amortize")
            why = ("int8 was slower than float on this CPU, as often on x86 desktops "
                   "(tfmot#599, #797): " + "; ".join(causes))
        out.append({"artifact": row["name"], "float_artifact": ref["name"],
                    "int8_p50_ms": mine["p50_ms"], "float_p50_ms": theirs["p50_ms"],
                    "speedup": ratio, "engine": mine.get("engine"), "sentence": f"{head}: {why}."})
    return out


