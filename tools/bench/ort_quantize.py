#!/usr/bin/env python3
"""Quantize an ONNX model with ONNX Runtime's own quantizer, the way ONNX Runtime's users do.

    python3 tools/bench/ort_quantize.py models/kws-dscnn/model.onnx -o /tmp/model.qdq.onnx
    python3 tools/bench/ort_quantize.py MODEL.onnx -o OUT.onnx --format qoperator \\
        --calibration a/input_0.npy --golden-out a/output_0.qop.npy

Formats (--format):
  qdq        onnxruntime.quantization.quant_pre_process, then quantize_static with
             QuantFormat.QDQ, per_channel=True, QInt8 weights, QUInt8 activations, MinMax
             calibration. Every quantized op is written as DequantizeLinear -> float op ->
             QuantizeLinear; ONNX Runtime fuses those into its int8 kernels when it
             optimizes the graph (ORT_ENABLE_EXTENDED and above).
  qoperator  the same, with QuantFormat.QOperator: QLinearConv, QLinearMatMul and the
             com.microsoft contrib ops QLinearAdd, QLinearGlobalAveragePool, ...
  dynamic    quantize_dynamic with QUInt8 weights on Conv, MatMul and Gemm
             (DynamicQuantizeLinear + ConvInteger / MatMulInteger), as models/generate.py
             makes kws-dscnn/model.dyn.onnx.

Models below default-domain opset 13 are converted to opset 13 first
(onnx.version_converter). When onnxruntime's symbolic shape inference fails on a model
(it asserts on some shape arithmetic), pre-processing is redone without it
(skip_symbolic_shape=True), which is enough for models with static shapes. Calibration uses the model's golden input(s): by default
`golden/input_*.npy` beside the model, one file per model input in input order (each
file is one calibration sample, which may be a batch).

--golden-out FILE writes ONNX Runtime's output 0 of the quantized model on the first
calibration sample, computed on one thread with graph optimizations off
(ORT_DISABLE_ALL: the graph runs node by node as written, as models/generate.py does for
every golden). --fused-out FILE writes the same with every optimization on
(ORT_ENABLE_ALL), where ONNX Runtime fuses each DequantizeLinear -> op -> QuantizeLinear
group into one int8 kernel (QLinearConv, QGemm, ...): integer accumulation and one
requantization, whose rounding differs from the float path's. --report FILE writes a JSON
summary, including how far the two are apart, in quantization steps of the output when
the output is quantized.

models/generate.py imports this module for the committed model.qdq.onnx /
model.qop.onnx files, so both use one recipe. Needs numpy, onnx, onnxruntime and sympy
(tools/bench/requirements.txt pins them); takes a few seconds per model.
"""

import argparse
import glob
import json
import os
import sys
import tempfile

# Microsoft's onnxruntime builds start a telemetry system (a thread, an SQLite store under
# ~/.cache/Microsoft, files in /tmp) unless told not to.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import version_converter  # noqa: E402

OPSET = 13
FORMATS = ("qdq", "qoperator", "dynamic")


def default_opset(model):
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def session(model_bytes, optimize):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize(src, dst, fmt, feeds):
    """Writes `src` quantized by ONNX Runtime in format `fmt` to `dst`.

    `feeds` is a list of {input name: array} calibration samples (unused for dynamic).
    Returns the default-domain opset of `src` before any conversion.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_dynamic, quantize_static)

    model = onnx.load(src)
    opset = default_opset(model)
    with tempfile.TemporaryDirectory(prefix="ort_quantize.") as tmp:
        path = src
        if opset is not None and opset < OPSET:
            model = version_converter.convert_version(model, OPSET)
            path = os.path.join(tmp, "opset13.onnx")
            onnx.save(model, path)
        if fmt == "dynamic":
            quantize_dynamic(path, dst, weight_type=QuantType.QUInt8,
                             op_types_to_quantize=["Conv", "MatMul", "Gemm"])
            return opset
        pre = os.path.join(tmp, "pre.onnx")
        try:
            quant_pre_process(path, pre)
        except AssertionError:
            # onnxruntime's symbolic shape inference asserts on some shape arithmetic
            # (PaddleOCR's classifier: a Concat with axis=-1 of 1-D shapes). Without it,
            # ONNX Runtime's optimizer folds such subgraphs when the shapes are static.
            print(f"ort_quantize: symbolic shape inference failed on {src}; "
                  "pre-processing without it (skip_symbolic_shape=True)", file=sys.stderr)
            quant_pre_process(path, pre, skip_symbolic_shape=True)
        quantize_static(
            pre, dst, _Reader(feeds),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return opset


def output_quantization(model, index=0):
    """(scale, zero point) of the QuantizeLinear whose result, maybe through a
    DequantizeLinear, is graph output `index`; None when the output is not quantized."""
    name = model.graph.output[index].name
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        params = node.input[1:3]
    elif node is not None and node.op_type in ("QLinearMatMul", "QLinearConv", "QLinearAdd"):
        return None  # a uint8 output; not what the R models produce
    else:
        return None
    if not all(p in inits for p in params) or len(params) < 2:
        return None
    scale, zp = inits[params[0]], inits[params[1]]
    if scale.size != 1:
        return None
    return float(scale.reshape(())), int(zp.reshape(()))


def golden_and_report(dst, feeds):
    """ONNX Runtime's output 0 of `dst` on feeds[0] with optimizations off (the golden),
    the same with every optimization on (QDQ groups fused into ONNX Runtime's int8
    kernels), and a summary of how far apart they are."""
    data = open(dst, "rb").read()
    model = onnx.load_from_string(data)
    (literal,) = session(data, optimize=False).run([model.graph.output[0].name], feeds[0])
    (fused,) = session(data, optimize=True).run([model.graph.output[0].name], feeds[0])
    diff = np.abs(fused.astype(np.float64) - literal.astype(np.float64))
    report = {
        "ops": sorted({n.op_type for n in model.graph.node}),
        "optimized_vs_golden_max_abs": float(diff.max()),
    }
    q = output_quantization(model)
    if q is not None:
        scale, zp = q
        report["output_scale"], report["output_zero_point"] = scale, zp
        report["optimized_vs_golden_max_steps"] = int(np.rint(diff / scale).max())
    return literal.astype(np.float32), fused.astype(np.float32), report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--format", choices=FORMATS, default="qdq")
    ap.add_argument("--calibration", nargs="+", metavar="NPY",
                    help="one .npy per model input (default: golden/input_*.npy beside the model)")
    ap.add_argument("--golden-out", metavar="NPY", help="write ONNX Runtime's output 0 (see above)")
    ap.add_argument("--fused-out", metavar="NPY",
                    help="write output 0 with ORT_ENABLE_ALL (ONNX Runtime's int8 kernels)")
    ap.add_argument("--report", metavar="JSON", help="write a JSON summary")
    args = ap.parse_args()

    files = args.calibration or sorted(
        glob.glob(os.path.join(os.path.dirname(os.path.abspath(args.model)), "golden", "input_*.npy")))
    if not files and (args.format != "dynamic" or args.golden_out):
        sys.exit(f"ort_quantize: no calibration input: no golden/input_*.npy beside {args.model}; "
                 "give --calibration")
    names = [i.name for i in onnx.load(args.model, load_external_data=False).graph.input]
    if files and len(files) != len(names):
        sys.exit(f"ort_quantize: the model has {len(names)} inputs ({', '.join(names)}), "
                 f"{len(files)} calibration files given")
    feeds = [{n: np.load(f) for n, f in zip(names, files)}] if files else []

    opset = quantize(args.model, args.output, args.format, feeds)
    report = {"source": args.model, "format": args.format, "source_opset": opset}
    if args.golden_out or args.fused_out:
        literal, fused, extra = golden_and_report(args.output, feeds)
        for path, out in ((args.golden_out, literal), (args.fused_out, fused)):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                np.save(path, out, allow_pickle=False)
        report.update(extra)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(f"ort_quantize: {args.output} ({args.format}, source opset {opset}): "
          + json.dumps({k: v for k, v in report.items() if k not in ("source", "format", "source_opset")}))


if __name__ == "__main__":
    main()
