#!/usr/bin/env python3
"""A model from outside the project for the benchmarks: PaddleOCR's text-direction
classifier (ch_ppocr_mobile_v2.0_cls, a MobileNetV3-style network: Conv, BatchNormalization,
HardSigmoid squeeze-excite, ReLU/hard-swish, 1x3x48x192 input, 2 classes), as the PyPI
wheel rapidocr-onnxruntime ships it.

    python3 tools/bench/ocr_cls.py                 # -> target/ocr-cls/
    python3 tools/bench/ocr_cls.py --out DIR --cache DIR

Nothing it writes is committed (the model is PaddleOCR's, Apache-2.0, not the project's).
It downloads the wheel with `pip download --no-deps` into the cache folder (default
target/ocr-cls/wheel; ~15 MB, once), checks the model's SHA-256, and writes to --out:

    model.onnx                   the wheel's model with its input fixed to [1, 3, 48, 192] and
                                 its output to [1, 2] (the wheel's has a batch of -1 and
                                 symbolic height and width), default-domain opset 11 as shipped
    golden/input_0.npy           a seeded image: uniform random 8-bit pixels normalized as
                                 RapidOCR does for this model, (x / 255 - 0.5) / 0.5
    golden/output_0.npy          onnxruntime's output on it (1 thread, ORT_DISABLE_ALL)
    model.qdq.onnx               tools/bench/ort_quantize.py --format qdq (converted to opset 13
                                 first), calibrated on golden/input_0.npy
    golden/output_0.qdq.npy      its onnxruntime output (ORT_DISABLE_ALL), and
    golden/output_0.qdq.fused.npy  with ORT_ENABLE_ALL (onnxruntime's int8 kernels)

Needs numpy, onnx, onnxruntime, sympy and pip (tools/bench/requirements.txt), and PyPI.
Takes about 20 seconds.
"""

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ort_quantize  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
SHAPE = [1, 3, 48, 192]


def fix_shape(model):
    """Concrete input and output shapes: batch 1, RapidOCR's 48x192 crop."""
    (inp,) = model.graph.input
    for dim, value in zip(inp.type.tensor_type.shape.dim, SHAPE):
        dim.Clear()
        dim.dim_value = value
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].Clear()
        out.type.tensor_type.shape.dim[0].dim_value = 1
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "ocr-cls"))
    ap.add_argument("--cache", help="where the wheel goes (default: OUT/wheel)")
    args = ap.parse_args()
    cache = args.cache or os.path.join(args.out, "wheel")
    gdir = os.path.join(args.out, "golden")
    os.makedirs(gdir, exist_ok=True)

    wheels = glob.glob(os.path.join(cache, "rapidocr_onnxruntime-1.4.4-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", WHEEL, "-d", cache]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"ocr_cls: `{' '.join(cmd)}` failed")
        wheels = glob.glob(os.path.join(cache, "rapidocr_onnxruntime-1.4.4-*.whl"))
    with zipfile.ZipFile(wheels[0]) as whl:
        data = whl.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"ocr_cls: {MEMBER} in {wheels[0]} has SHA-256 {digest}, expected {SHA256}")

    model = fix_shape(onnx.load_from_string(data))
    onnx.checker.check_model(model)
    path = os.path.join(args.out, "model.onnx")
    onnx.save(model, path)

    rng = np.random.default_rng(20261207)
    pixels = rng.integers(0, 256, size=SHAPE).astype(np.float32)
    x = ((pixels / 255.0 - 0.5) / 0.5).astype(np.float32)
    np.save(os.path.join(gdir, "input_0.npy"), x, allow_pickle=False)
    feeds = [{model.graph.input[0].name: x}]
    (out,) = ort_quantize.session(model.SerializeToString(), optimize=False).run(None, feeds[0])
    np.save(os.path.join(gdir, "output_0.npy"), out.astype(np.float32), allow_pickle=False)

    qdq = os.path.join(args.out, "model.qdq.onnx")
    opset = ort_quantize.quantize(path, qdq, "qdq", feeds)
    literal, fused, report = ort_quantize.golden_and_report(qdq, feeds)
    np.save(os.path.join(gdir, "output_0.qdq.npy"), literal, allow_pickle=False)
    np.save(os.path.join(gdir, "output_0.qdq.fused.npy"), fused, allow_pickle=False)
    print(f"ocr_cls: {path} (opset {opset}, output {out.ravel().tolist()}), {qdq}: "
          f"output {literal.ravel().tolist()}, fused vs golden max abs "
          f"{report['optimized_vs_golden_max_abs']:.3g}")


if __name__ == "__main__":
    main()
