#!/usr/bin/env python3
"""Check that ONNX files are valid ONNX that ONNX Runtime loads and runs.

Usage:
    python3 tools/ort_check.py MODEL.onnx [MODEL.onnx ...] [--input INPUT.npy]

For each model: onnx.checker.check_model(full_check=True) (structure, operator schemas,
strict shape inference), then an onnxruntime CPU session (graph optimizations off, so
the graph runs as written, and again with the default optimizations), one run on
INPUT.npy (when its shape fits the model's input) or on zeros of the model's input
shapes (symbolic dimensions as 1), and a check that every output is finite.

Prints one line per file and exits 1 if any file fails (2 on bad usage).
Needs `pip install onnx onnxruntime numpy`; used by CI and by hand, never by the tests.
"""

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort

ELEM = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def feeds_for(session, given):
    feeds = {}
    for i, arg in enumerate(session.get_inputs()):
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        if given is not None and i == 0 and _fits(given.shape, arg.shape):
            feeds[arg.name] = given.astype(ELEM.get(arg.type, np.float32))
        else:
            feeds[arg.name] = np.zeros(shape, dtype=ELEM.get(arg.type, np.float32))
    return feeds


def _fits(found, declared):
    return len(found) == len(declared) and all(
        not isinstance(d, int) or d <= 0 or d == f for f, d in zip(found, declared)
    )


def check(path, given):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    results = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds_for(session, given))
        for out, arg in zip(outputs, session.get_outputs()):
            if np.issubdtype(np.asarray(out).dtype, np.floating) and not np.isfinite(out).all():
                raise ValueError(f"output {arg.name} holds NaN or infinity")
        results.append(outputs)
    plain, optimized = results
    drift = max(
        (float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) for a, b in zip(plain, optimized)
         if np.issubdtype(np.asarray(a).dtype, np.number) and a.size),
        default=0.0,
    )
    ops = sorted({n.op_type for n in model.graph.node})
    shapes = ", ".join(f"{o.shape}" for o in plain)
    return f"opset {opset}, outputs {shapes}, optimized vs plain max |diff| {drift:.3g}, ops {' '.join(ops)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--input", help="an .npy input for the models' first input")
    args = parser.parse_args()
    given = np.load(args.input) if args.input else None
    failed = 0
    for path in args.models:
        try:
            print(f"ok    {path}: {check(path, given)}")
        except Exception as e:  # noqa: BLE001 - every failure is reported per file
            failed += 1
            message = " ".join(str(e).split())
            print(f"FAIL  {path}: {type(e).__name__}: {message}")
    print(f"{len(args.models) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
