#!/usr/bin/env python3
"""Generate Perch's reference workloads (ONNX models, weight-only int8 variants, goldens).

Usage (from the repository root):

    pip install -r models/requirements.txt
    python3 models/generate.py

Everything under models/ except this script and requirements.txt is produced here:

    models/<name>/model.onnx            float32, default-domain opset 13, ir_version 8
    models/<name>/model.w8.onnx         weight-only int8 (per-output-channel DequantizeLinear)
    models/<name>/model.{dyn,qdq,qop}.onnx  quantized by onnxruntime's own tools (some workloads)
    models/<name>/golden/*.npy          golden input/outputs computed by onnxruntime
    models/iris-mlp/{model.onnx,schema.json,golden/}  the tabular model /predict serves (skl2onnx)
    models/fixtures/*                   fixtures (invalid per-axis DQ at opset 11, contrib ops, an export)
    models/README.md, models/models.json

The script is deterministic: fixed seeds, single-threaded onnxruntime, no timestamps in
any written file. Running it twice yields byte-identical output.
"""

import io
import json
import os
import sys
import zipfile

# Microsoft's onnxruntime builds start a telemetry system (a thread, an SQLite store under
# ~/.cache/Microsoft, files in /tmp) unless told not to.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13
IR_VERSION = 8
PRODUCER = "perch models/generate.py"
MB = 1024 * 1024


# --------------------------------------------------------------------------------------
# small helpers


def f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def save_npy(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, arr, allow_pickle=False)


def save_npz_deterministic(path, **arrays):
    """Like np.savez, but with a fixed zip timestamp so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            npy = io.BytesIO()
            np.save(npy, arrays[key], allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def session(model, optimize=False):
    """An onnxruntime CPU session. Goldens use optimize=False (ORT_DISABLE_ALL): the graph is
    executed node by node as written. With optimizations on, onnxruntime rewrites graphs in
    ways that change the numbers: Conv+BatchNormalization folding (~1e-6) and, at
    ORT_ENABLE_EXTENDED and above, DequantizeLinear->MatMul into com.microsoft.MatMulNBits,
    which is off by ~1e-3 relative (see the fixtures)."""
    so = ort.SessionOptions()
    # One thread: reduction order (and thus the goldens' bits) does not depend on the host.
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run(model, feeds, optimize=False):
    sess = session(model, optimize)
    return sess.run(None, feeds)


def save_model(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


# --------------------------------------------------------------------------------------
# graph builder


class Builder:
    """Accumulates nodes and initializers; knows the layer types the workloads need."""

    def __init__(self, name, rng, bn_eps):
        self.name = name
        self.rng = rng
        self.bn_eps = bn_eps
        self.nodes = []
        self.inits = {}  # name -> np.ndarray, insertion ordered
        self.node_names = set()
        self.bns = []  # (x_name, mean_init, var_init, reduce_axes)

    # -- primitives
    def init(self, name, arr):
        assert name not in self.inits, name
        self.inits[name] = arr
        return name

    def node(self, op, inputs, outputs, name, **attrs):
        assert name not in self.node_names, name
        self.node_names.add(name)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def he(self, shape, fan_in):
        return f32(self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape))

    def small_bias(self, n):
        return f32(self.rng.normal(0.0, 0.01, size=n))

    # -- layers
    def conv(self, x, name, cin, cout, k, stride=1, pads=None, group=1, bias=True):
        kh, kw = k
        if pads is None:
            pads = [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]
        w = self.init(f"{name}.weight", self.he((cout, cin // group, kh, kw), (cin // group) * kh * kw))
        inputs = [x, w]
        if bias:
            inputs.append(self.init(f"{name}.bias", self.small_bias(cout)))
        return self.node(
            "Conv", inputs, [f"{name}.out"], name,
            kernel_shape=[kh, kw], strides=[stride, stride], pads=list(pads),
            dilations=[1, 1], group=group,
        )

    def gemm(self, x, name, k, n, out=None, bias=True, weights=None):
        """y = x @ W^T + b with W stored [n, k] (transB=1), like a PyTorch/Keras export."""
        if weights is None:
            w, b = self.he((n, k), k), (self.small_bias(n) if bias else None)
        else:
            w, b = weights
        inputs = [x, self.init(f"{name}.weight", f32(w))]
        if b is not None:
            inputs.append(self.init(f"{name}.bias", f32(b)))
        return self.node("Gemm", inputs, [out or f"{name}.out"], name, alpha=1.0, beta=1.0, transB=1)

    def bn(self, x, name, c, spatial_rank, activated=True):
        # Realistic un-fused BN: gamma ~ 1 +- 0.1, small beta. Running mean/var are
        # placeholders here and are calibrated later on the actual pre-BN activations.
        # Before a ReLU/ReLU6 the shift is slightly positive (~70% of units active): with
        # zero-mean shifts a random BN+ReLU stack is "chaotic" (every perturbation, int8
        # weight error or float rounding alike, grows ~20% per layer), unlike a trained net.
        gamma = self.init(f"{name}.weight", f32(self.rng.normal(1.0, 0.1, size=c)))
        beta_mean, beta_std = (0.5, 0.2) if activated else (0.0, 0.1)
        beta = self.init(f"{name}.bias", f32(self.rng.normal(beta_mean, beta_std, size=c)))
        mean = self.init(f"{name}.running_mean", np.zeros(c, np.float32))
        var = self.init(f"{name}.running_var", np.ones(c, np.float32))
        axes = (0,) + tuple(range(2, 2 + spatial_rank))
        self.bns.append((x, mean, var, axes))
        return self.node(
            "BatchNormalization", [x, gamma, beta, mean, var], [f"{name}.out"], name,
            epsilon=self.bn_eps, momentum=0.9,
        )

    def relu(self, x, name, out=None):
        return self.node("Relu", [x], [out or f"{name}.out"], name)

    def relu6(self, x, name):
        if "relu6.min" not in self.inits:
            self.init("relu6.min", np.array(0.0, np.float32))
            self.init("relu6.max", np.array(6.0, np.float32))
        return self.node("Clip", [x, "relu6.min", "relu6.max"], [f"{name}.out"], name)

    # -- model assembly
    def model(self, inputs, outputs, doc, extra_outputs=()):
        outs = list(outputs) + [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs]
        graph = helper.make_graph(
            self.nodes, self.name, inputs, outs,
            initializer=[numpy_helper.from_array(a, n) for n, a in self.inits.items()],
        )
        m = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
            producer_name=PRODUCER, producer_version="1", doc_string=doc,
        )
        return m


def calibrate_bn(b, make_model, calib, input_name):
    """Set every BN's running mean/var to the statistics of its real input on `calib`.

    Done BN by BN in graph order, so each calibration sees the already-calibrated upstream.
    A small seeded jitter keeps the statistics from being exactly the batch statistics, as
    for a trained network evaluated on a different batch.
    """
    for x, mean, var, axes in b.bns:
        (act,) = run(make_model(extra=[x], batch="N"), {input_name: calib})[1:]
        act = act.astype(np.float64)
        m, v = act.mean(axis=axes), act.var(axis=axes)
        m = m + 0.05 * np.sqrt(v) * b.rng.normal(size=m.shape)
        v = v * np.exp(b.rng.normal(0.0, 0.05, size=v.shape))
        b.inits[mean] = f32(m)
        b.inits[var] = f32(np.maximum(v, 1e-6))


def activation_report(model, feeds):
    """Max |activation| over every intermediate tensor, and whether anything is non-finite."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o not in existing:
                m.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    names = [o.name for o in m.graph.output]
    vals = run(m, feeds)
    worst = max(float(np.abs(v).max()) for v in vals)
    finite = all(np.isfinite(v).all() for v in vals)
    return worst, finite, len(names)


# --------------------------------------------------------------------------------------
# weight-only int8


def quantize_weights_w8(model):
    """Replace each Conv/Gemm/MatMul weight initializer by int8 + per-output-channel scale
    + DequantizeLinear (symmetric, int8 zero point 0). Activations and biases stay float."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    dq_nodes, new_inits, replaced = [], [], {}
    names = {n.name for n in g.node}
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        wname = n.input[1]
        assert wname in inits, f"{n.name}: weight is not an initializer"
        if wname not in replaced:
            w = numpy_helper.to_array(inits[wname]).astype(np.float32)
            if n.op_type == "Conv":
                axis = 0  # [M, C/group, kH, kW]
            elif n.op_type == "Gemm":
                trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            else:
                axis = w.ndim - 1  # MatMul B [.., K, N]
            red = tuple(i for i in range(w.ndim) if i != axis)
            amax = np.abs(w).max(axis=red)
            scale = f32(np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)))
            bshape = [1] * w.ndim
            bshape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
            zp = np.zeros(scale.shape, np.int8)
            qn, sn, zn, dn = f"{wname}.q", f"{wname}.scale", f"{wname}.zero_point", f"{wname}.dq"
            new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn),
                          numpy_helper.from_array(zp, zn)]
            node_name = f"{n.name}.weight_dequantize"
            assert node_name not in names
            names.add(node_name)
            dq_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dn], name=node_name, axis=axis))
            replaced[wname] = dn
        n.input[1] = replaced[wname]
    kept = [i for i in g.initializer if i.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    nodes = dq_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    m.doc_string = model.doc_string + " Weight-only int8 variant (per-output-channel symmetric DequantizeLinear)."
    return m


# --------------------------------------------------------------------------------------
# accounting


def _shape_of(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for i in inferred.graph.initializer:
        shapes[i.name] = list(i.dims)
    return shapes


def count_macs(model):
    """Multiply-accumulates of Conv/Gemm/MatMul for batch 1 (symbolic dims count as 1)."""
    shapes = _shape_of(model)
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]  # [M, C/group, kh, kw]: per output element C/group*kh*kw MACs
            out = shapes[n.output[0]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            a = shapes[n.input[0]]
            trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            out = shapes[n.output[0]]
            total += int(np.prod(out)) * k
        elif n.op_type == "MatMul":
            a = shapes[n.input[0]]
            out = shapes[n.output[0]]
            total += int(np.prod(out)) * a[-1]
    return total


def count_params(model):
    """(all float initializer elements, same without BN running stats); excludes Clip bounds."""
    total, trainable = 0, 0
    for i in model.graph.initializer:
        if i.name.startswith("relu6."):
            continue
        n = int(np.prod(i.dims))
        total += n
        if not (i.name.endswith(".running_mean") or i.name.endswith(".running_var")):
            trainable += n
    return total, trainable


def io_spec(vis):
    out = []
    for vi in vis:
        dims = vi.type.tensor_type.shape.dim
        out.append({
            "name": vi.name,
            "dtype": "float32",
            "shape": [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims],
        })
    return out


def check_model(model, label):
    onnx.checker.check_model(model, full_check=True)
    names = [n.name for n in model.graph.node]
    assert all(names), f"{label}: unnamed node"
    assert len(set(names)) == len(names), f"{label}: duplicate node names"
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]


# --------------------------------------------------------------------------------------
# workloads


def build_digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # k/16: exact in float32 and float64
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", solver="adam",
                        max_iter=1000, random_state=0)
    clf.fit(x_tr.astype(np.float64), y_tr)
    assert clf.n_iter_ < clf.max_iter, "MLP did not converge"

    b = Builder("digits_mlp", np.random.default_rng(1), bn_eps=1e-5)
    h = "pixels"
    n_layers = len(clf.coefs_)
    for i, (w, c) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        last = i == n_layers - 1
        h = b.gemm(h, f"fc{i + 1}", w.shape[0], w.shape[1], weights=(w.T, c),
                   out="logits" if last else None)
        if not last:
            h = b.relu(h, f"fc{i + 1}.relu")
    b.node("Softmax", [h], ["probabilities"], "softmax", axis=1)
    model = b.model(
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        "R1 digits-mlp: scikit-learn MLPClassifier (64-32, relu) trained on sklearn load_digits "
        "(8x8 pixels 0..16 scaled by 1/16), softmax probabilities over digits 0-9.",
    )
    (probs,) = run(model, {"pixels": x_te})
    ref = clf.predict_proba(x_te.astype(np.float64))
    err = float(np.abs(probs - ref).max())
    assert err < 1e-5, f"ONNX vs sklearn predict_proba: {err}"
    assert (probs.argmax(1) == clf.predict(x_te)).all()
    acc = float((probs.argmax(1) == y_te).mean())
    extra = {"x_test": x_te, "y_test": y_te, "sklearn_max_abs_err": err, "n_iter": int(clf.n_iter_),
             "n_train": int(len(y_tr))}
    golden = x_te[:8]
    return model, golden, acc, extra


def build_kws_dscnn():
    rng = np.random.default_rng(2)
    b = Builder("kws_dscnn", rng, bn_eps=1e-3)  # Keras BatchNormalization default epsilon
    filters = 64
    # Keras Conv2D(64, (10,4), strides=2, padding='same') on 49x10: out 25x5,
    # total pad H = 24*2+10-49 = 9 -> (4, 5), W = 4*2+4-10 = 2 -> (1, 1).
    h = b.conv("mfcc", "conv1", 1, filters, (10, 4), stride=2, pads=[4, 1, 5, 1])
    h = b.relu(b.bn(h, "conv1.bn", filters, 2), "conv1.relu")
    for i in range(1, 5):
        p = f"block{i}"
        h = b.conv(h, f"{p}.dw", filters, filters, (3, 3), group=filters)
        h = b.relu(b.bn(h, f"{p}.dw.bn", filters, 2), f"{p}.dw.relu")
        h = b.conv(h, f"{p}.pw", filters, filters, (1, 1))
        h = b.relu(b.bn(h, f"{p}.pw.bn", filters, 2), f"{p}.pw.relu")
    h = b.node("GlobalAveragePool", [h], ["pool.out"], "pool")
    h = b.node("Flatten", [h], ["flatten.out"], "flatten", axis=1)
    b.gemm(h, "fc", filters, 12, out="logits")

    def make(extra=(), batch=1):
        return b.model(
            [helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, [batch, 1, 49, 10])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 12])],
            "R2 kws-dscnn: MLPerf Tiny keyword spotting DS-CNN (49x10 MFCC, 12 classes), "
            "untrained (seeded He-normal weights, BN statistics calibrated on random input).",
            extra_outputs=extra,
        )

    calib = f32(np.random.default_rng(102).normal(size=(16, 1, 49, 10)))
    calibrate_bn(b, make, calib, "mfcc")
    golden = f32(np.random.default_rng(202).normal(size=(1, 1, 49, 10)))
    return make, calib, golden


def build_anomaly_ae():
    rng = np.random.default_rng(3)
    b = Builder("anomaly_ae", rng, bn_eps=1e-3)
    h = "features"
    dims = [128, 128, 128, 128, 8, 128, 128, 128, 128]
    prev = 640
    for i, d in enumerate(dims):
        p = f"dense{i + 1}"
        h = b.gemm(h, p, prev, d)
        h = b.relu(b.bn(h, f"{p}.bn", d, 0), f"{p}.relu")
        prev = d
    b.gemm(h, f"dense{len(dims) + 1}", prev, 640, out="reconstruction")

    def make(extra=(), batch=1):
        return b.model(
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 640])],
            [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, [batch, 640])],
            "R3 anomaly-ae: MLPerf Tiny anomaly detection (ToyADMOS) dense autoencoder, "
            "640 -> 128x4 -> 8 -> 128x4 -> 640, untrained (seeded He-normal weights, BN "
            "statistics calibrated on random input).",
            extra_outputs=extra,
        )

    calib = f32(np.random.default_rng(103).normal(size=(64, 640)))
    calibrate_bn(b, make, calib, "features")
    golden = f32(np.random.default_rng(203).normal(size=(1, 640)))
    return make, calib, golden


def make_divisible(v, divisor=8, min_value=None):
    """torchvision/Keras MobileNet channel rounding."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


MBV2_SETTINGS = [  # t (expansion), c (channels), n (repeats), s (first stride)
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def build_mobilenetv2(width=0.35, num_classes=10, res=128):
    rng = np.random.default_rng(4)
    b = Builder("mobilenetv2_035", rng, bn_eps=1e-5)  # torchvision BatchNorm2d default epsilon
    cin = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    h = b.conv("image", "features.0.conv", 3, cin, (3, 3), stride=2, bias=False)
    h = b.relu6(b.bn(h, "features.0.bn", cin, 2), "features.0.relu6")
    idx = 1
    for t, c, n, s in MBV2_SETTINGS:
        cout = make_divisible(c * width)
        for r in range(n):
            stride = s if r == 0 else 1
            p = f"features.{idx}"
            x_in = h
            hidden = int(round(cin * t))
            if t != 1:
                h = b.conv(h, f"{p}.expand", cin, hidden, (1, 1), bias=False)
                h = b.relu6(b.bn(h, f"{p}.expand.bn", hidden, 2), f"{p}.expand.relu6")
            h = b.conv(h, f"{p}.dw", hidden, hidden, (3, 3), stride=stride, group=hidden, bias=False)
            h = b.relu6(b.bn(h, f"{p}.dw.bn", hidden, 2), f"{p}.dw.relu6")
            h = b.conv(h, f"{p}.project", hidden, cout, (1, 1), bias=False)
            h = b.bn(h, f"{p}.project.bn", cout, 2, activated=False)  # linear bottleneck: no activation
            if stride == 1 and cin == cout:
                h = b.node("Add", [x_in, h], [f"{p}.add.out"], f"{p}.add")
            cin = cout
            idx += 1
    p = f"features.{idx}"
    h = b.conv(h, f"{p}.conv", cin, last, (1, 1), bias=False)
    h = b.relu6(b.bn(h, f"{p}.bn", last, 2), f"{p}.relu6")
    h = b.node("GlobalAveragePool", [h], ["pool.out"], "pool")
    h = b.node("Flatten", [h], ["flatten.out"], "flatten", axis=1)
    b.gemm(h, "classifier", last, num_classes, out="logits")

    def make(extra=(), batch=1):
        return b.model(
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, res, res])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
            f"R4 mobilenetv2-035: MobileNetV2 (Sandler et al. 2018), width multiplier {width}, "
            f"{res}x{res} RGB (ImageNet-normalized), {num_classes}-class head, untrained (seeded "
            "He-normal weights, BN statistics calibrated on random input).",
            extra_outputs=extra,
        )

    def images(seed, n):
        r = np.random.default_rng(seed)
        px = r.integers(0, 256, size=(n, 3, res, res)).astype(np.float32) / 255.0
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
        return f32((px - mean) / std)

    calib = images(104, 8)
    calibrate_bn(b, make, calib, "image")
    golden = images(204, 1)
    return make, calib, golden


# --------------------------------------------------------------------------------------
# fixtures


def per_axis_dq_fixture(opset):
    w = np.array([[12, -7, 100], [-127, 3, 45], [64, 127, -90], [5, -33, 17]], np.int8)  # [K=4, N=3]
    scale = np.array([0.01, 0.5, 0.002], np.float32)  # per output column (axis 1)
    zp = np.zeros(3, np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["w.q", "w.scale", "w.zero_point"], ["w"], name="w.dequantize", axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, f"per_axis_dq_opset{opset}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(w, "w.q"), numpy_helper.from_array(scale, "w.scale"),
                     numpy_helper.from_array(zp, "w.zero_point")],
    )
    doc = ("Per-axis (per-channel) DequantizeLinear feeding MatMul. "
           + ("INVALID: default-domain opset 11, where DequantizeLinear has no 'axis' attribute and "
              "needs scalar scale/zero point (per-axis needs opset >= 13). A runtime must reject it."
              if opset < 13 else "Valid: opset 13 supports per-axis DequantizeLinear."))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                             producer_name=PRODUCER, producer_version="1", doc_string=doc)


def write_fixtures(report):
    d = os.path.join(HERE, "fixtures")
    os.makedirs(d, exist_ok=True)
    bad = per_axis_dq_fixture(11)
    save_model(bad, os.path.join(d, "per-axis-dq-opset11.onnx"))
    try:
        session(bad)
    except Exception as e:  # noqa: BLE001 - any rejection is what we want
        msg = str(e).strip().splitlines()[0]
        print(f"  [ok] onnxruntime rejects per-axis-dq-opset11.onnx: {type(e).__name__}: {msg}")
        report["opset11_ort_error"] = msg
    else:
        raise AssertionError("onnxruntime accepted the invalid opset-11 per-axis DequantizeLinear fixture")
    try:
        onnx.checker.check_model(bad)
        report["opset11_checker"] = "accepted by onnx.checker (without full_check)"
    except onnx.checker.ValidationError as e:
        report["opset11_checker"] = str(e).strip().splitlines()[0]
    print(f"  onnx.checker on opset-11 fixture: {report['opset11_checker']}")

    good = per_axis_dq_fixture(13)
    check_model(good, "per-axis-dq-opset13")
    save_model(good, os.path.join(d, "per-axis-dq-opset13.onnx"))
    x = f32(np.random.default_rng(5).normal(size=(1, 4)))
    (y,) = run(good, {"x": x})
    w = numpy_helper.to_array(good.graph.initializer[0]).astype(np.float32) * numpy_helper.to_array(good.graph.initializer[1])
    ref = x.astype(np.float64) @ w.astype(np.float64)
    assert np.allclose(y, ref, rtol=1e-6, atol=1e-6), (y, ref)
    (y_opt,) = run(good, {"x": x}, optimize=True)
    report["opset13_ort_optimized_max_rel_diff"] = float(np.abs(y_opt - y).max() / np.abs(y).max())
    print(f"  opset-13 fixture: ORT (all optimizations, DQ+MatMul -> MatMulNBits) differs from the "
          f"literal graph by {report['opset13_ort_optimized_max_rel_diff']:.3g} relative")
    save_npy(os.path.join(d, "per-axis-dq-opset13.input_0.npy"), x)
    save_npy(os.path.join(d, "per-axis-dq-opset13.output_0.npy"), y)
    report["opset13_output"] = y.ravel().tolist()

    save_model(vendor_op_fixture(), os.path.join(d, "unsupported-op.onnx"))
    save_model(lrn_fixture(), os.path.join(d, "onnx-extension-op.onnx"))
    write_depthwise_fixture(d)
    write_depthwise_nhwc_fixture(d)
    write_qdq_depthwise_fixture(d)
    write_qdq_hardswish_fixture(d)
    write_quantized_softmax_fixture(d)
    write_qlinear_contrib_fixture(d)
    write_exported_fixture(d)


def vendor_op_fixture():
    """A graph made of one ONNX Runtime contrib op that the engine does not implement
    (com.microsoft FusedConv, which ONNX Runtime's optimizer writes): the engine must name
    the op and its node, not fail later."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    w = numpy_helper.from_array(f32([[[[1.0]], [[-0.5]]], [[[0.25]], [[2.0]]]]), "w")
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], name="vendor_conv", domain="com.microsoft",
                            kernel_shape=[1, 1], activation="Relu")
    graph = helper.make_graph([node], "unsupported", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("com.microsoft", 1)],
                             ir_version=IR_VERSION, producer_name=PRODUCER, producer_version="1")


# The quantized contrib ops of qlinear-contrib.onnx, in output order: what each output is.
QLINEAR_CONTRIB_OUTPUTS = [
    ("sigmoid", "QLinearSigmoid of x (uint8)"),
    ("leaky_relu", "QLinearLeakyRelu, alpha 0.1"),
    ("mul", "QLinearMul of the two"),
    ("avg_pool", "QLinearAveragePool 3x3, stride 2, pads 1, count_include_pad 0"),
    ("concat", "QLinearConcat of sigmoid and leaky_relu on the channel axis"),
    ("add", "QLinearAdd of concat and a [1, 8, 1, 1] constant (broadcast)"),
    ("pool", "QLinearGlobalAveragePool of add"),
    ("gemm_q", "QGemm, transB=1, alpha 0.5, per-column int8 weights, int32 bias, uint8 output"),
    ("gemm_f", "QGemm, transB=0, per-tensor uint8 weights, no bias, float output"),
    ("add_i8", "QLinearAdd on int8 tensors (x quantized to int8, plus itself)"),
    ("conv", "standard QLinearConv 3x3, pads 1, per-tensor int8 weights, int32 bias (tract's own)"),
    ("matmul", "standard QLinearMatMul of the pooled features, per-column int8 weights (tract's own)"),
]


def qlinear_contrib_fixture():
    """Every quantized com.microsoft operator the engine runs, and the standard QLinearConv and
    QLinearMatMul, on one [1, 4, 6, 6] float input quantized to uint8 (and int8), each result a
    graph output, for ONNX Runtime's own numbers."""
    rng = np.random.default_rng(31)
    inits = []

    def const(name, value, dtype):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def qparams(name, scale, zero_point, dtype=np.uint8):
        return [const(f"{name}.scale", scale, np.float32), const(f"{name}.zero_point", zero_point, dtype)]

    ms = "com.microsoft"
    x = qparams("x", 0.02, 128)
    sig = qparams("sigmoid", 1.0 / 256, 0)
    lrelu = qparams("leaky_relu", 0.015, 100)
    mul = qparams("mul", 0.006, 80)
    pool3 = qparams("avg_pool", 0.005, 70)
    cat = qparams("concat", 0.015, 100)
    bias = qparams("bias", 0.01, 128)
    add = qparams("add", 0.02, 90)
    gap = qparams("pool", 0.012, 80)
    gemm = qparams("gemm_q", 0.03, 120)
    x8 = qparams("x8", 0.03, 3, np.int8)
    add8 = qparams("add_i8", 0.05, -2, np.int8)
    w1 = np.clip(np.rint(rng.normal(0, 40, size=(5, 8))), -127, 127).astype(np.int8)
    w1_scale = f32(rng.uniform(0.002, 0.02, size=5))
    w2 = rng.integers(0, 256, size=(8, 3)).astype(np.uint8)
    w3 = np.clip(np.rint(rng.normal(0, 30, size=(6, 4, 3, 3))), -127, 127).astype(np.int8)
    w4 = np.clip(np.rint(rng.normal(0, 50, size=(8, 4))), -127, 127).astype(np.int8)
    conv = qparams("conv", 0.05, 120)
    matmul = qparams("matmul", 0.02, 110)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", *x], ["xq"], name="x.quantize"),
        helper.make_node("QLinearSigmoid", ["xq", *x, *sig], ["sigmoid"], name="sigmoid", domain=ms),
        helper.make_node("QLinearLeakyRelu", ["xq", *x, *lrelu], ["leaky_relu"], name="leaky_relu",
                         domain=ms, alpha=0.1),
        helper.make_node("QLinearMul", ["sigmoid", *sig, "leaky_relu", *lrelu, *mul], ["mul"], name="mul",
                         domain=ms),
        helper.make_node("QLinearAveragePool", ["mul", *mul, *pool3], ["avg_pool"], name="avg_pool", domain=ms,
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("QLinearConcat", [*cat, "sigmoid", *sig, "leaky_relu", *lrelu], ["concat"],
                         name="concat", domain=ms, axis=1),
        helper.make_node("QLinearAdd", ["concat", *cat, const("bias", rng.integers(60, 200, size=(1, 8, 1, 1)),
                                                               np.uint8), *bias, *add],
                         ["add"], name="add", domain=ms),
        helper.make_node("QLinearGlobalAveragePool", ["add", *add, *gap], ["pool"], name="pool", domain=ms,
                         channels_last=0),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("QGemm", ["flat", *gap, const("w1", w1, np.int8), const("w1.scale", w1_scale, np.float32),
                                   const("w1.zero_point", np.zeros(5), np.int8),
                                   const("b1", rng.integers(-2000, 2000, size=5), np.int32), *gemm],
                         ["gemm_q"], name="gemm_q", domain=ms, transB=1, alpha=0.5),
        helper.make_node("QGemm", ["flat", *gap, const("w2", w2, np.uint8), const("w2.scale", 0.004, np.float32),
                                   const("w2.zero_point", 128, np.uint8)],
                         ["gemm_f"], name="gemm_f", domain=ms),
        helper.make_node("QuantizeLinear", ["x", *x8], ["xq8"], name="x.quantize_i8"),
        helper.make_node("QLinearAdd", ["xq8", *x8, "xq8", *x8, *add8], ["add_i8"], name="add_i8", domain=ms),
        helper.make_node("QLinearConv", ["xq", *x, const("w3", w3, np.int8), const("w3.scale", 0.004, np.float32),
                                         const("w3.zero_point", 0, np.int8), *conv,
                                         const("b3", rng.integers(-500, 500, size=6), np.int32)],
                         ["conv"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearMatMul", ["flat", *gap, const("w4", w4, np.int8),
                                           const("w4.scale", rng.uniform(0.002, 0.01, size=4), np.float32),
                                           const("w4.zero_point", np.zeros(4), np.int8), *matmul],
                         ["matmul"], name="matmul"),
    ]
    shapes = {"sigmoid": [1, 4, 6, 6], "leaky_relu": [1, 4, 6, 6], "mul": [1, 4, 6, 6], "avg_pool": [1, 4, 3, 3],
              "concat": [1, 8, 6, 6], "add": [1, 8, 6, 6], "pool": [1, 8, 1, 1], "gemm_q": [1, 5],
              "gemm_f": [1, 3], "add_i8": [1, 4, 6, 6], "conv": [1, 6, 6, 6], "matmul": [1, 4]}
    types = {"gemm_f": TensorProto.FLOAT, "add_i8": TensorProto.INT8}
    outputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.UINT8), shapes[n])
               for n, _ in QLINEAR_CONTRIB_OUTPUTS]
    graph = helper.make_graph(nodes, "qlinear_contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                         [1, 4, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(ms, 1)],
                             ir_version=IR_VERSION, producer_name=PRODUCER, producer_version="1")


def write_qlinear_contrib_fixture(d):
    model = qlinear_contrib_fixture()
    onnx.checker.check_model(model)
    save_model(model, os.path.join(d, "qlinear-contrib.onnx"))
    x = f32(np.random.default_rng(32).normal(0, 1.0, size=(1, 4, 6, 6)))
    ys = run(model, {"x": x})
    save_npy(os.path.join(d, "qlinear-contrib.input_0.npy"), x)
    for i, y in enumerate(ys):
        save_npy(os.path.join(d, f"qlinear-contrib.output_{i}.npy"), y)
    spread = {name: (int(y.min()), int(y.max())) if y.dtype != np.float32 else
              (round(float(y.min()), 3), round(float(y.max()), 3))
              for (name, _), y in zip(QLINEAR_CONTRIB_OUTPUTS, ys)}
    print(f"  qlinear-contrib: output ranges (min, max) {spread}")


# Weights, BatchNormalization parameters and other constants of exported-opset11.onnx are
# Constant nodes, as paddle2onnx writes them (and PyTorch's exporter with
# do_constant_folding=False).
def exported_opset11_fixture():
    """A small CNN the way exporters write it, for `perch quantize`: every weight a Constant
    node (no initializers), each Conv followed by an unfolded BatchNormalization, default-domain
    opset 11 with an opset-11-only form (Squeeze with an `axes` attribute), a depthwise conv,
    a Gemm classifier and a Softmax."""
    rng = np.random.default_rng(41)
    b = Builder("exported_opset11", rng, bn_eps=1e-5)
    h = b.conv("x", "conv1", 3, 8, (3, 3), stride=2, pads=[1, 1, 1, 1], bias=False)
    h = b.relu(b.bn(h, "conv1.bn", 8, 2), "conv1.relu")
    h = b.conv(h, "dw", 8, 8, (3, 3), pads=[1, 1, 1, 1], group=8, bias=False)
    h = b.relu6(b.bn(h, "dw.bn", 8, 2), "dw.relu6")
    h = b.conv(h, "pw", 8, 16, (1, 1), pads=[0, 0, 0, 0])
    h = b.relu(b.bn(h, "pw.bn", 16, 2), "pw.relu")
    h = b.conv(h, "conv2", 16, 16, (3, 3), stride=2, pads=[1, 1, 1, 1], bias=False)
    h = b.relu(b.bn(h, "conv2.bn", 16, 2), "conv2.relu")
    h = b.node("GlobalAveragePool", [h], ["pool.out"], "pool")
    h = b.node("Flatten", [h], ["flatten.out"], "flatten", axis=1)
    h = b.gemm(h, "fc", 16, 6)
    b.node("Softmax", [h], ["probabilities"], "softmax", axis=1)

    def make(extra=(), batch=1):
        return b.model(
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 32])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 6])],
            "", extra_outputs=extra,
        )

    calib = f32(np.random.default_rng(42).normal(size=(16, 3, 16, 32)))
    calibrate_bn(b, make, calib, "x")
    float13 = make()
    # The export form: constants as Constant nodes, Squeeze(axes) for Flatten, opset 11.
    nodes = []
    for name, value in b.inits.items():
        nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.constant",
                                      value=numpy_helper.from_array(value, name)))
    for n in float13.graph.node:
        if n.op_type == "Flatten":
            n = helper.make_node("Squeeze", list(n.input), list(n.output), name="squeeze", axes=[2, 3])
        nodes.append(n)
    graph = helper.make_graph(nodes, "exported_opset11", list(float13.graph.input), list(float13.graph.output))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6,
                              producer_name=PRODUCER, producer_version="1",
                              doc_string="A small CNN as exporters write it: Constant-node weights, "
                                         "unfolded BatchNormalization, opset 11.")
    onnx.checker.check_model(model, full_check=True)
    golden = f32(np.random.default_rng(43).normal(size=(1, 3, 16, 32)))
    (out13,) = run(float13, {"x": golden})
    (out,) = run(model, {"x": golden})
    assert np.array_equal(out, out13), "the export form must compute what the opset-13 model does"
    return model, golden, out


def write_exported_fixture(d):
    model, golden, out = exported_opset11_fixture()
    save_model(model, os.path.join(d, "exported-opset11.onnx"))
    save_npy(os.path.join(d, "exported-opset11.input_0.npy"), golden)
    save_npy(os.path.join(d, "exported-opset11.output_0.npy"), out)
    print(f"  exported-opset11: {sum(n.op_type == 'Constant' for n in model.graph.node)} Constant nodes, "
          f"output {np.round(out.ravel(), 4).tolist()}")


def dynamic_variant(folder, golden):
    """R2 quantized by ONNX Runtime's own tool (`quantize_dynamic`: uint8 weights,
    ConvInteger / MatMulInteger after DynamicQuantizeLinear), with its onnxruntime output:
    a model the engine runs on integer kernels, made independently of `perch quantize`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = os.path.join(folder, "model.onnx")
    dst = os.path.join(folder, "model.dyn.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    dyn = onnx.load(dst)
    (out,) = run(dyn, {dyn.graph.input[0].name: golden})
    save_npy(os.path.join(folder, "golden", "output_0.dyn.npy"), out.astype(np.float32))
    print(f"  dyn (onnxruntime quantize_dynamic): {sorted({n.op_type for n in dyn.graph.node})}")


# Which ONNX Runtime static quantizations are committed, per workload (tools/bench/ort_quantize.py:
# "qdq" is QuantFormat.QDQ, "qop" QuantFormat.QOperator).
ORT_STATIC = {
    "digits-mlp": ("qdq",),
    "kws-dscnn": ("qdq", "qop"),
    "anomaly-ae": ("qdq",),
    "mobilenetv2-035": ("qdq", "qop"),
}


def ort_static_variants(folder, name, golden):
    """The workload quantized by ONNX Runtime's quantize_static (after quant_pre_process;
    per-channel QInt8 weights, QUInt8 activations, MinMax calibration on the golden input),
    with ONNX Runtime's output on the golden input: the reference for Perch's int8 kernels
    on the same file. The recipe lives in tools/bench/ort_quantize.py, which the benchmarks
    also use for models outside models/."""
    sys.path.insert(0, os.path.join(HERE, "..", "tools", "bench"))
    import ort_quantize

    src = os.path.join(folder, "model.onnx")
    in_name = onnx.load(src).graph.input[0].name
    reports = {}
    for variant in ORT_STATIC.get(name, ()):
        fmt = {"qdq": "qdq", "qop": "qoperator"}[variant]
        dst = os.path.join(folder, f"model.{variant}.onnx")
        ort_quantize.quantize(src, dst, fmt, [{in_name: golden}])
        out, fused, report = ort_quantize.golden_and_report(dst, [{in_name: golden}])
        save_npy(os.path.join(folder, "golden", f"output_0.{variant}.npy"), out)
        if variant == "qdq":
            save_npy(os.path.join(folder, "golden", "output_0.qdq.fused.npy"), fused)
        report["bytes"] = os.path.getsize(dst)
        reports[variant] = report
        steps = report.get("optimized_vs_golden_max_steps")
        print(f"  {variant} (onnxruntime quantize_static, {fmt}): {report['ops']}; ORT optimized vs golden "
              f"max abs {report['optimized_vs_golden_max_abs']:.3g}"
              + (f" ({steps} output steps)" if steps is not None else ""))
    return reports


def lrn_fixture():
    """One LRN node, an operator tract keeps in its ONNX extension registry (`tract_onnx`)
    when it writes NNEF: devices built without that registry cannot load the archive."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=3, alpha=1e-4, beta=0.75, bias=1.0)
    graph = helper.make_graph([node], "lrn", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             ir_version=IR_VERSION, producer_name=PRODUCER, producer_version="1")


DEPTHWISE_BRANCHES = [
    # output, conv attributes, output channels, ReLU after it; what Perch's depthwise
    # kernels do with it (kernels/src/f32_dwconv)
    ("dilated", dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2], group=8), 8, False),
    ("k7", dict(kernel_shape=[7, 7], pads=[3, 3, 3, 3], group=8), 8, False),
    ("stride3", dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], group=8), 8, False),
    ("grouped", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2), 8, False),
    ("multiplier2", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8), 16, False),
    ("k5s2_asym_relu", dict(kernel_shape=[5, 5], strides=[2, 2], pads=[2, 1, 1, 2], group=8), 8, True),
    ("k3s1_asym", dict(kernel_shape=[3, 3], pads=[0, 1, 1, 0], group=8), 8, False),
]


def write_depthwise_fixture(d):
    """Depthwise and grouped convolutions on one [1, 8, 13, 11] input, one branch per
    case Perch's depthwise kernels cover or decline (dilation, a 7x7 filter, stride 3,
    groups of several channels, a channel multiplier), with ONNX Runtime's outputs."""
    rng = np.random.default_rng(12)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 13, 11])
    nodes, inits, outputs = [], [], []
    for name, attrs, cout, relu in DEPTHWISE_BRANCHES:
        cin_per_group = 8 // attrs["group"]
        k = attrs["kernel_shape"]
        w = f32(rng.normal(size=(cout, cin_per_group, k[0], k[1])) * 0.3)
        b = f32(rng.normal(size=(cout,)) * 0.1)
        inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        conv_out = f"{name}.conv" if relu else name
        nodes.append(helper.make_node("Conv", ["x", f"{name}.w", f"{name}.b"], [conv_out], name=name, **attrs))
        if relu:
            nodes.append(helper.make_node("Relu", [conv_out], [name], name=f"{name}.relu"))
        outputs.append(name)
    graph = helper.make_graph(nodes, "depthwise_variants", [x], [], initializer=inits)
    xs = f32(rng.normal(size=(1, 8, 13, 11)))
    write_branches_fixture(d, "depthwise-variants", graph, outputs, xs)


def write_branches_fixture(d, name, graph, outputs, xs, optimize=False):
    """Saves `graph` (one input `x`, the branch outputs named in `outputs`, their shapes
    as ONNX infers them) as fixtures/<name>.onnx with `xs` and ONNX Runtime's outputs
    for it (`optimize`: ORT_ENABLE_ALL, else node by node)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version="1")
    inferred = onnx.shape_inference.infer_shapes(model)
    by_name = {vi.name: vi for vi in inferred.graph.value_info}
    model.graph.output.extend(by_name[out] for out in outputs)
    check_model(model, name)
    save_model(model, os.path.join(d, f"{name}.onnx"))
    ys = run(model, {"x": xs}, optimize=optimize)
    save_npy(os.path.join(d, f"{name}.input_0.npy"), xs)
    for i, y in enumerate(ys):
        save_npy(os.path.join(d, f"{name}.output_{i}.npy"), f32(y))


QDQ_DEPTHWISE_STRIDES = [("s2x1", [2, 1]), ("s1x2", [1, 2]), ("s2x2", [2, 2])]


def write_qdq_depthwise_fixture(d):
    """Depthwise 3x3 convolutions in QDQ form (u8 activations, per-channel i8 weights,
    i32 bias) with strides 2x1, 1x2 and 2x2 on one [1, 24, 12, 10] input, as MobileNetV3
    text classifiers (PaddleOCR's) have the unequal ones, with ONNX Runtime's fused
    outputs (ORT_ENABLE_ALL: QLinearConv)."""
    rng = np.random.default_rng(21)
    c, h, w = 24, 12, 10
    sx, zx = 0.02, 128
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x.scale", "x.zp"], ["x.q"], name="x.quantize"),
        helper.make_node("DequantizeLinear", ["x.q", "x.scale", "x.zp"], ["x.dq"], name="x.dequantize"),
    ]
    inits = [
        numpy_helper.from_array(np.array(sx, np.float32), "x.scale"),
        numpy_helper.from_array(np.array(zx, np.uint8), "x.zp"),
    ]
    outputs = []
    for name, strides in QDQ_DEPTHWISE_STRIDES:
        wf = rng.normal(size=(c, 1, 3, 3)) * 0.3
        sw = f32(np.abs(wf).reshape(c, -1).max(axis=1) / 127)
        wq = np.clip(np.round(wf / sw[:, None, None, None]), -127, 127).astype(np.int8)
        bq = np.round(rng.normal(size=(c,)) * 0.1 / (sx * sw)).astype(np.int32)
        sy = 0.03 + 0.01 * len(outputs)
        inits += [
            numpy_helper.from_array(wq, f"{name}.w"),
            numpy_helper.from_array(sw, f"{name}.w.scale"),
            numpy_helper.from_array(np.zeros(c, np.int8), f"{name}.w.zp"),
            numpy_helper.from_array(bq, f"{name}.b"),
            numpy_helper.from_array(f32(sx * sw), f"{name}.b.scale"),
            numpy_helper.from_array(np.zeros(c, np.int32), f"{name}.b.zp"),
            numpy_helper.from_array(np.array(sy, np.float32), f"{name}.y.scale"),
            numpy_helper.from_array(np.array(120, np.uint8), f"{name}.y.zp"),
        ]
        nodes += [
            helper.make_node("DequantizeLinear", [f"{name}.w", f"{name}.w.scale", f"{name}.w.zp"],
                             [f"{name}.w.dq"], name=f"{name}.w.dequantize", axis=0),
            helper.make_node("DequantizeLinear", [f"{name}.b", f"{name}.b.scale", f"{name}.b.zp"],
                             [f"{name}.b.dq"], name=f"{name}.b.dequantize", axis=0),
            helper.make_node("Conv", ["x.dq", f"{name}.w.dq", f"{name}.b.dq"], [f"{name}.conv"], name=name,
                             kernel_shape=[3, 3], strides=strides, pads=[1, 1, 1, 1], group=c),
            helper.make_node("QuantizeLinear", [f"{name}.conv", f"{name}.y.scale", f"{name}.y.zp"],
                             [f"{name}.q"], name=f"{name}.quantize"),
            helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.y.scale", f"{name}.y.zp"],
                             [name], name=f"{name}.dequantize"),
        ]
        outputs.append(name)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])
    graph = helper.make_graph(nodes, "qdq_depthwise_strides", [x], [], initializer=inits)
    xs = f32(rng.normal(size=(1, c, h, w)))
    write_branches_fixture(d, "qdq-depthwise-strides", graph, outputs, xs, optimize=True)


def write_depthwise_nhwc_fixture(d):
    """Two depthwise convolutions between transposes from and to channels last, as models
    converted from TensorFlow have them: the engine runs them on channels-last data, the
    layout tract also picks on aarch64 for ONNX models."""
    rng = np.random.default_rng(13)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 13, 11, 24])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 6, 24])
    inits = []
    for name in ("dw1", "dw2"):
        inits += [numpy_helper.from_array(f32(rng.normal(size=(24, 1, 3, 3)) * 0.3), f"{name}.w"),
                  numpy_helper.from_array(f32(rng.normal(size=(24,)) * 0.1), f"{name}.b")]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x.nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x.nchw", "dw1.w", "dw1.b"], ["dw1"], name="dw1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=24),
        helper.make_node("Relu", ["dw1"], ["dw1.relu"], name="dw1.relu"),
        helper.make_node("Conv", ["dw1.relu", "dw2.w", "dw2.b"], ["dw2"], name="dw2",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=24),
        helper.make_node("Transpose", ["dw2"], ["y"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(nodes, "depthwise_nhwc", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version="1")
    check_model(model, "depthwise-nhwc")
    save_model(model, os.path.join(d, "depthwise-nhwc.onnx"))
    xs = f32(rng.normal(size=(1, 13, 11, 24)))
    (ys,) = run(model, {"x": xs})
    save_npy(os.path.join(d, "depthwise-nhwc.input_0.npy"), xs)
    save_npy(os.path.join(d, "depthwise-nhwc.output_0.npy"), f32(ys))


def write_qdq_hardswish_fixture(d):
    """Element-wise regions in QDQ form as ONNX Runtime's quantize_static writes them for
    MobileNetV3 (PaddleOCR's text classifier, opset 13), on one [1, 8, 6, 6] input quantized
    to u8, with ONNX Runtime's node-by-node outputs:
      hardswish  x * q(x + 3) / 6, every intermediate quantized (the 3 a u8 constant):
                 x feeds two branches, so it is no chain; the engine makes it one table
      sigmoid    q(sigmoid(x)), also read by gated
      gated      x * q(sigmoid(x)): a function of x alone, another table
      excite     x * q(mean(x)) per channel (squeeze-excite): not element-wise
    x's dequantized tensor feeds every branch."""
    rng = np.random.default_rng(17)
    c, h, w = 8, 6, 6
    def scalar(value, dtype, name):
        return numpy_helper.from_array(np.array(value, dtype), name)
    inits = [
        scalar(0.05, np.float32, "x.scale"), scalar(128, np.uint8, "x.zp"),
        scalar(255, np.uint8, "three.q"), scalar(3.0 / 255, np.float32, "three.scale"),
        scalar(0, np.uint8, "three.zp"),
        scalar(0.04, np.float32, "add.scale"), scalar(0, np.uint8, "add.zp"),
        scalar(0.1, np.float32, "mul.scale"), scalar(60, np.uint8, "mul.zp"),
        scalar(6.0, np.float32, "six"),
        scalar(0.02, np.float32, "hardswish.scale"), scalar(30, np.uint8, "hardswish.zp"),
        scalar(1.0 / 255, np.float32, "sigmoid.scale"), scalar(0, np.uint8, "sigmoid.zp"),
        scalar(0.03, np.float32, "gated.scale"), scalar(100, np.uint8, "gated.zp"),
        scalar(0.01, np.float32, "mean.scale"), scalar(128, np.uint8, "mean.zp"),
        scalar(0.02, np.float32, "excite.scale"), scalar(128, np.uint8, "excite.zp"),
    ]
    def qdq(x, q, name):
        return [
            helper.make_node("QuantizeLinear", [x, f"{q}.scale", f"{q}.zp"], [f"{name}.q"], name=f"{name}.quantize"),
            helper.make_node("DequantizeLinear", [f"{name}.q", f"{q}.scale", f"{q}.zp"], [f"{name}.dq"],
                             name=f"{name}.dequantize"),
        ]
    nodes = qdq("x", "x", "x") + [
        helper.make_node("DequantizeLinear", ["three.q", "three.scale", "three.zp"], ["three"], name="three"),
        helper.make_node("Add", ["x.dq", "three"], ["add"], name="add"),
        *qdq("add", "add", "add"),
        helper.make_node("Mul", ["x.dq", "add.dq"], ["mul"], name="mul"),
        *qdq("mul", "mul", "mul"),
        helper.make_node("Div", ["mul.dq", "six"], ["div"], name="div"),
        *qdq("div", "hardswish", "hardswish"),
        helper.make_node("Sigmoid", ["x.dq"], ["sig"], name="sigmoid"),
        *qdq("sig", "sigmoid", "sigmoid"),
        helper.make_node("Mul", ["x.dq", "sigmoid.dq"], ["gate"], name="gate"),
        *qdq("gate", "gated", "gated"),
        helper.make_node("GlobalAveragePool", ["x.dq"], ["mean"], name="mean"),
        *qdq("mean", "mean", "mean"),
        helper.make_node("Mul", ["x.dq", "mean.dq"], ["exc"], name="excite"),
        *qdq("exc", "excite", "excite"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])
    graph = helper.make_graph(nodes, "qdq_hardswish", [x], [], initializer=inits)
    xs = f32(rng.normal(size=(1, c, h, w)) * 2.5)
    outputs = ["hardswish.dq", "sigmoid.dq", "gated.dq", "excite.dq"]
    write_branches_fixture(d, "qdq-hardswish", graph, outputs, xs)


def write_quantized_softmax_fixture(d):
    """The end of every ONNX Runtime-quantized classifier: Q/DQ, Softmax, Q/DQ, as ORT's
    quantize_static writes it for a real OCR classifier (its scales and zero points).
    tract 0.23.9 turns the DQ -> Softmax -> Q chain into a 256-entry lookup table, as if
    Softmax were element-wise, and answers [1.0, 1.0] where ONNX Runtime answers
    [0.37647, 0.62353]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    inits = [
        numpy_helper.from_array(np.array(0.00228438, np.float32), "x.scale"),
        numpy_helper.from_array(np.array(109, np.uint8), "x.zero_point"),
        numpy_helper.from_array(np.array(0.00392157, np.float32), "p.scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "p.zero_point"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x.scale", "x.zero_point"], ["x.q"], name="x.quantize"),
        helper.make_node("DequantizeLinear", ["x.q", "x.scale", "x.zero_point"], ["x.dq"], name="x.dequantize"),
        helper.make_node("Softmax", ["x.dq"], ["p"], name="softmax", axis=-1),
        helper.make_node("QuantizeLinear", ["p", "p.scale", "p.zero_point"], ["p.q"], name="p.quantize"),
        helper.make_node("DequantizeLinear", ["p.q", "p.scale", "p.zero_point"], ["y"], name="p.dequantize"),
    ]
    graph = helper.make_graph(nodes, "quantized_softmax", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION,
                              producer_name=PRODUCER, producer_version="1")
    check_model(model, "quantized-softmax")
    save_model(model, os.path.join(d, "quantized-softmax.onnx"))
    xs = np.array([[-0.17818187, 0.33123553]], np.float32)
    (ys,) = run(model, {"x": xs})
    # Node by node ONNX Runtime gives [0.37647, 0.62353]; its fused QLinearSoftmax one step
    # less for the first class. Either way the probabilities sum to 1 within two steps.
    assert abs(ys.sum() - 1.0) <= 2 * 0.00392157, ys
    save_npy(os.path.join(d, "quantized-softmax.input_0.npy"), xs)
    save_npy(os.path.join(d, "quantized-softmax.output_0.npy"), f32(ys))


# --------------------------------------------------------------------------------------
# main


WORKLOADS = [
    # id, folder, reference
    ("R1", "digits-mlp", "scikit-learn `load_digits` + `MLPClassifier` (64-32, relu)"),
    ("R2", "kws-dscnn", "MLPerf Tiny v1.x keyword spotting, DS-CNN (Zhang et al. 2017, *Hello Edge*)"),
    ("R3", "anomaly-ae", "MLPerf Tiny v1.x anomaly detection (ToyADMOS), dense autoencoder"),
    ("R4", "mobilenetv2-035", "MobileNetV2 (Sandler et al. 2018), alpha 0.35, torchvision layout"),
]


# --------------------------------------------------------------------------------------
# tabular model for /predict: named features, a schema, class labels

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def build_iris_mlp():
    """scikit-learn's iris data set (4 measurements in cm, 3 species): a StandardScaler whose
    mean and scale go into the feature schema (the device standardizes, not the graph), and an
    MLPClassifier on the standardized features, exported by skl2onnx with zipmap off and only
    the probability output kept (the label branch needs ai.onnx.ml's ArrayFeatureExtractor, which
    the engine does not run; the device takes the argmax and names it with the schema's labels)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.helpers.onnx_helper import select_model_inputs_outputs
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x_tr, x_te, y_tr, y_te = train_test_split(iris.data, iris.target, test_size=0.3,
                                              stratify=iris.target, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    clf = MLPClassifier(hidden_layer_sizes=(16,), activation="relu", solver="adam",
                        max_iter=3000, random_state=0)
    clf.fit(scaler.transform(x_tr), y_tr)
    assert clf.n_iter_ < clf.max_iter, "MLP did not converge"

    exported = to_onnx(clf, initial_types=[("features", FloatTensorType([None, 4]))],
                       options={id(clf): {"zipmap": False}},
                       target_opset={"": OPSET, "ai.onnx.ml": 3})
    model = select_model_inputs_outputs(exported, outputs=["probabilities"])
    (graph_input,) = model.graph.input
    graph_input.type.tensor_type.shape.dim[0].dim_param = "N"
    # skl2onnx starts with a float-to-float Cast; tract folds it away and would name the
    # input after the Cast's output (`cast_input`), so it goes here.
    (cast,) = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "features"]
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
    model.graph.node.remove(cast)
    for node in model.graph.node:
        node.input[:] = ["features" if i == cast.output[0] else i for i in node.input]
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]))
    needed = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    used = {n.domain for n in model.graph.node}
    assert used == {""}, f"non-default domains left: {used}"
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", OPSET))
    model.ir_version = IR_VERSION
    model.producer_name, model.producer_version = PRODUCER, "1"
    model.doc_string = ("iris-mlp: scikit-learn MLPClassifier (16, relu) on sklearn load_iris, "
                        "standardized features in, softmax probabilities over 3 species out.")
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    check_model(model, "iris-mlp")

    z_te = f32(scaler.transform(x_te))
    (probs,) = run(model, {"features": z_te})
    ref = clf.predict_proba(scaler.transform(x_te))
    err = float(np.abs(probs - ref).max())
    assert err < 1e-5, f"ONNX vs sklearn predict_proba: {err}"
    acc = float((probs.argmax(1) == y_te).mean())
    schema = {
        "features": [
            {"name": name, "type": "numeric", "mean": float(m), "std": float(sd)}
            for name, m, sd in zip(IRIS_FEATURES, scaler.mean_, scaler.scale_)
        ],
        "labels": [str(t) for t in iris.target_names],
    }
    info = {"accuracy": acc, "n_heldout": int(len(y_te)), "n_train": int(len(y_tr)),
            "sklearn_max_abs_err": err, "raw_first_heldout": [float(v) for v in x_te[0]],
            "label_first_heldout": str(iris.target_names[y_te[0]])}
    return model, schema, z_te[:8], info


def write_tabular():
    folder = os.path.join(HERE, "iris-mlp")
    model, schema, golden, info = build_iris_mlp()
    save_model(model, os.path.join(folder, "model.onnx"))
    with open(os.path.join(folder, "schema.json"), "w") as f:
        json.dump(schema, f, indent=2)
        f.write("\n")
    (out,) = run(model, {"features": golden})
    save_npy(os.path.join(folder, "golden", "input_0.npy"), golden)
    save_npy(os.path.join(folder, "golden", "output_0.npy"), out)
    info["params"], _ = count_params(model)
    info["float_bytes"] = os.path.getsize(os.path.join(folder, "model.onnx"))
    print(f"  iris-mlp: ONNX vs sklearn predict_proba max abs err {info['sklearn_max_abs_err']:.3g}, "
          f"held-out accuracy {info['accuracy']:.4f} on {info['n_heldout']} samples")
    return info


def fmt_shape(s):
    return "[" + ", ".join(str(d) for d in s) + "]"


def fmt_size(n):
    return f"{n / 1024:.1f} KiB" if n < MB else f"{n / MB:.2f} MiB"


def main():
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"scikit-learn {sklearn.__version__}")
    entries = []
    for wid, name, ref in WORKLOADS:
        print(f"{wid} {name}")
        folder = os.path.join(HERE, name)
        gdir = os.path.join(folder, "golden")
        os.makedirs(gdir, exist_ok=True)
        accuracy, extra_info = None, {}
        if name == "digits-mlp":
            model, golden, accuracy, extra = build_digits_mlp()
            save_npy(os.path.join(gdir, "labels_0.npy"), extra["y_test"][:8])
            save_npz_deterministic(os.path.join(folder, "heldout.npz"), x=extra["x_test"], y=extra["y_test"])
            feeds_calib = {"pixels": extra["x_test"]}
            extra_info = {"n_heldout": int(len(extra["y_test"])), "n_train": extra["n_train"],
                          "sklearn_max_abs_err": extra["sklearn_max_abs_err"],
                          "sklearn_n_iter": extra["n_iter"]}
            print(f"  ONNX vs sklearn predict_proba max abs err {extra['sklearn_max_abs_err']:.3g}, "
                  f"held-out accuracy {accuracy:.4f} on {len(extra['y_test'])} samples")
        else:
            make, calib, golden = {"kws-dscnn": build_kws_dscnn, "anomaly-ae": build_anomaly_ae,
                                   "mobilenetv2-035": build_mobilenetv2}[name]()
            model = make()
            # A batched twin of the model to check the outputs depend on the input.
            (calib_out,) = run(make(batch="N"), {model.graph.input[0].name: calib})
            spread = float(calib_out.std(axis=0).mean())
            print(f"  output std across {len(calib)} calibration inputs (mean over outputs): {spread:.4f}")
            assert spread > 1e-2, "degenerate model: output does not depend on the input"
            feeds_calib = None

        check_model(model, name)
        w8 = quantize_weights_w8(model)
        check_model(w8, name + " w8")
        in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
        feeds = {in_name: golden}
        (out,) = run(model, feeds)
        (out_w8,) = run(w8, feeds)
        for label, o in (("float", out), ("w8", out_w8)):
            assert np.isfinite(o).all(), f"{name} {label}: non-finite output"
            assert float(o.std()) > 1e-3, f"{name} {label}: degenerate output (std {o.std()})"
        worst, finite, ntens = activation_report(model, feeds)
        assert finite and worst < 1e3, f"{name}: activations out of range ({worst})"
        print(f"  output std {out.std():.4f}, range [{out.min():.4f}, {out.max():.4f}]; "
              f"max |activation| over {ntens} tensors {worst:.3f}")

        # How far onnxruntime's own graph optimizations move the result (tolerance guidance).
        (out_opt,) = run(model, feeds, optimize=True)
        (out_w8_opt,) = run(w8, feeds, optimize=True)
        opt_diff = float(np.abs(out - out_opt).max())
        opt_diff_w8 = float(np.abs(out_w8 - out_w8_opt).max())

        diff = np.abs(out_w8.astype(np.float64) - out.astype(np.float64))
        w8_stats = {
            "max_abs_diff": float(diff.max()),
            "max_abs_diff_rel_to_max_abs_output": float(diff.max() / np.abs(out).max()),
            "rel_l2_diff": float(np.linalg.norm(diff) / np.linalg.norm(out)),
            "top1_agree": bool((out.argmax(-1) == out_w8.argmax(-1)).all()) if name != "anomaly-ae" else None,
        }
        print(f"  w8 vs float: max abs {w8_stats['max_abs_diff']:.4g}, rel(max) "
              f"{w8_stats['max_abs_diff_rel_to_max_abs_output']:.4g}, rel(L2) {w8_stats['rel_l2_diff']:.4g}; "
              f"ORT optimized vs unoptimized max abs {opt_diff:.3g} (w8 {opt_diff_w8:.3g})")

        accuracy_w8 = None
        if feeds_calib is not None:
            (p_w8,) = run(w8, feeds_calib)
            accuracy_w8 = float((p_w8.argmax(1) == extra["y_test"]).mean())
            print(f"  w8 held-out accuracy {accuracy_w8:.4f}")

        save_model(model, os.path.join(folder, "model.onnx"))
        save_model(w8, os.path.join(folder, "model.w8.onnx"))
        save_npy(os.path.join(gdir, "input_0.npy"), golden)
        save_npy(os.path.join(gdir, "output_0.npy"), out)
        save_npy(os.path.join(gdir, "output_0.w8.npy"), out_w8)
        if name == "kws-dscnn":
            dynamic_variant(folder, golden)
        ort_static = ort_static_variants(folder, name, golden)

        params, trainable = count_params(model)
        macs = count_macs(model)
        assert count_macs(w8) == macs
        files = {f: os.path.getsize(os.path.join(folder, f)) for f in ("model.onnx", "model.w8.onnx")}
        entry = {
            "id": wid,
            "name": name,
            "folder": f"models/{name}",
            "reference": ref,
            "inputs": io_spec(model.graph.input),
            "outputs": io_spec(model.graph.output),
            "params": params,
            "params_trainable": trainable,
            "macs": macs,
            "float_bytes": files["model.onnx"],
            "w8_bytes": files["model.w8.onnx"],
            "accuracy": accuracy,
            "accuracy_w8": accuracy_w8,
            "trained": name == "digits-mlp",
            "golden": {
                "inputs": ["golden/input_0.npy"],
                "outputs": ["golden/output_0.npy"],
                "outputs_w8": ["golden/output_0.w8.npy"],
                "input_shape": list(golden.shape),
            },
            "w8_vs_float": w8_stats,
            "ort_optimized_vs_unoptimized_max_abs_diff": opt_diff,
            "ort_optimized_vs_unoptimized_max_abs_diff_w8": opt_diff_w8,
        }
        if ort_static:
            entry["ort_static"] = ort_static
        if extra_info:
            entry.update(extra_info)
        entries.append(entry)
        print(f"  params {params} ({trainable} without BN running stats), MACs {macs}, "
              f"float {files['model.onnx']} B, w8 {files['model.w8.onnx']} B")

    print("fixtures")
    fixture_report = {}
    write_fixtures(fixture_report)
    print("tabular")
    tabular = write_tabular()

    with open(os.path.join(HERE, "models.json"), "w") as f:
        json.dump(entries, f, indent=2)
        f.write("\n")
    write_readme(entries, fixture_report, tabular)

    total = 0
    for root, _dirs, fs in os.walk(HERE):
        if ".venv" in root or "__pycache__" in root:
            continue
        total += sum(os.path.getsize(os.path.join(root, x)) for x in fs)
    print(f"models/ total {total} bytes")
    assert total < 6_500_000, "models/ must stay under 6.5 MB"


def write_readme(entries, fx, tab):
    L = []
    L.append("# Reference workloads\n")
    L.append(
        "Four small ONNX models that Perch's tests and benchmarks run through the tract engine, plus\n"
        "guard fixtures. Everything here except `generate.py` and `requirements.txt` is generated:\n"
    )
    L.append("```sh\npip install -r models/requirements.txt && python3 models/generate.py\n```\n")
    L.append(
        "The script is deterministic (fixed seeds, single-threaded onnxruntime, fixed zip timestamps):\n"
        "re-running it reproduces every file byte for byte. No test needs Python; the generated files\n"
        "are committed.\n"
    )
    L.append(
        f"Goldens were computed with **onnxruntime {ort.__version__}** (CPUExecutionProvider, 1 thread,\n"
        f"graph optimizations off, `ORT_DISABLE_ALL`, so the graph runs node by node as written) from\n"
        f"onnx {onnx.__version__}, numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}.\n"
    )
    L.append("## Layout\n")
    L.append(
        "```\n"
        "<name>/model.onnx             float32, default-domain opset 13, ir_version 8, unique node names\n"
        "<name>/model.w8.onnx          weight-only int8: each Conv/Gemm/MatMul weight is an int8 initializer\n"
        "                              + per-output-channel float scale + int8 zero point 0, through a\n"
        "                              DequantizeLinear (opset 13, axis = output-channel axis). Activations\n"
        "                              and biases stay float.\n"
        "<name>/golden/input_0.npy     golden input (float32)\n"
        "<name>/golden/output_0.npy    onnxruntime output of model.onnx on input_0\n"
        "<name>/golden/output_0.w8.npy onnxruntime output of model.w8.onnx on input_0\n"
        "kws-dscnn/model.dyn.onnx      R2 quantized by onnxruntime's quantize_dynamic (uint8 weights,\n"
        "                              DynamicQuantizeLinear + ConvInteger / MatMulInteger): the engine\n"
        "                              runs it on its integer kernels\n"
        "kws-dscnn/golden/output_0.dyn.npy  onnxruntime output of model.dyn.onnx on input_0\n"
        f"<name>/model.qdq.onnx         ({', '.join(n for n, v in ORT_STATIC.items() if 'qdq' in v)})\n"
        "                              quantized by onnxruntime's quantize_static, QDQ format\n"
        "                              (tools/bench/ort_quantize.py: quant_pre_process, per-channel QInt8\n"
        "                              weights, QUInt8 activations, MinMax calibration on input_0)\n"
        f"<name>/model.qop.onnx         ({', '.join(n for n, v in ORT_STATIC.items() if 'qop' in v)})\n"
        "                              the same in QOperator format (QLinearConv, QGemm,\n"
        "                              QLinearGlobalAveragePool, QLinearAdd: com.microsoft contrib ops)\n"
        "<name>/golden/output_0.qdq.npy, output_0.qop.npy  onnxruntime output of those on input_0\n"
        "<name>/golden/output_0.qdq.fused.npy  the same for model.qdq.onnx with ORT_ENABLE_ALL: QDQ groups\n"
        "                              fused into onnxruntime's int8 kernels (see below)\n"
        "digits-mlp/golden/labels_0.npy  int64 true labels of the 8 golden samples\n"
        "digits-mlp/heldout.npz          x: float32 [n, 64], y: int64 [n], the whole held-out split\n"
        "models.json                   machine-readable version of the table below\n"
        "```\n"
    )
    L.append("## Models\n")
    L.append("| id | folder | origin / architecture | input | output | params | MACs | float | w8 | accuracy |")
    L.append("|---|---|---|---|---|---:|---:|---:|---:|---|")
    for e in entries:
        i, o = e["inputs"][0], e["outputs"][0]
        acc = (f"{e['accuracy'] * 100:.2f}% held-out ({e['n_heldout']} samples)"
               if e["accuracy"] is not None else "untrained (random weights)")
        L.append(
            f"| {e['id']} | `{e['name']}/` | {e['reference']} | `{i['name']}` {fmt_shape(i['shape'])} | "
            f"`{o['name']}` {fmt_shape(o['shape'])} | {e['params']:,} | {e['macs']:,} | "
            f"{fmt_size(e['float_bytes'])} | {fmt_size(e['w8_bytes'])} | {acc} |"
        )
    L.append("")
    L.append(
        "*params* counts every float initializer element (weights, biases, BatchNormalization\n"
        "gamma/beta/running mean/running var; `params_trainable` in models.json leaves the running\n"
        "statistics out). *MACs* are the multiply-accumulates of Conv/Gemm/MatMul for one sample\n"
        "(a depthwise conv costs `out_elements * kH * kW`, i.e. `C/group = 1` per tap). Sizes are\n"
        "file sizes (KiB = 1024 bytes).\n"
    )
    L.append("### Weight-only int8 vs float (golden input)\n")
    L.append("| id | max abs diff | max abs diff / max abs output | relative L2 | top-1 agrees | ORT opt vs golden, float | ORT opt vs golden, w8 |")
    L.append("|---|---:|---:|---:|---|---:|---:|")
    for e in entries:
        s = e["w8_vs_float"]
        top1 = "n/a" if s["top1_agree"] is None else ("yes" if s["top1_agree"] else "no")
        L.append(f"| {e['id']} | {s['max_abs_diff']:.3g} | {s['max_abs_diff_rel_to_max_abs_output']:.3g} | "
                 f"{s['rel_l2_diff']:.3g} | {top1} | {e['ort_optimized_vs_unoptimized_max_abs_diff']:.2g} | "
                 f"{e['ort_optimized_vs_unoptimized_max_abs_diff_w8']:.2g} |")
    L.append("")
    r1 = entries[0]
    L.append(
        f"R1's w8 variant scores {r1['accuracy_w8'] * 100:.2f}% on the held-out split "
        f"(float: {r1['accuracy'] * 100:.2f}%). The last two columns (max abs) are how far\n"
        "onnxruntime's own graph optimizations (`ORT_ENABLE_ALL`, e.g. Conv+BatchNormalization folding)\n"
        "move the output away from the golden: a floor for any engine-vs-golden tolerance.\n"
    )
    L.append("### ONNX Runtime's static int8 variants (golden input)\n")
    L.append(
        "`model.qdq.onnx` and `model.qop.onnx` are ONNX Runtime's own quantization of `model.onnx`, the\n"
        "reference for Perch's int8 kernels on the same file. Their goldens, like every golden here, run\n"
        "the graph as written (`ORT_DISABLE_ALL`: DequantizeLinear, the float op, QuantizeLinear). With\n"
        "its optimizations on, ONNX Runtime fuses the QDQ groups into its int8 kernels, whose rounding\n"
        "differs: the last column is that distance at the output, in quantization steps of the\n"
        "output (onnxruntime on x86_64). `output_0.qdq.fused.npy` is that fused result, which equals\n"
        "the QOperator file's golden where there is one (R2, R4): the reference for an int8 kernel,\n"
        "while `output_0.qdq.npy` is the reference for the graph's float semantics.\n"
    )
    L.append("| id | variant | operators | size | ORT optimized vs golden, max abs (output steps) |")
    L.append("|---|---|---|---:|---:|")
    for e in entries:
        for variant, r in e.get("ort_static", {}).items():
            steps = r.get("optimized_vs_golden_max_steps")
            L.append(f"| {e['id']} | {variant} | {', '.join(r['ops'])} | {fmt_size(r['bytes'])} | "
                     f"{r['optimized_vs_golden_max_abs']:.3g}" + (f" ({steps})" if steps is not None else "") + " |")
    L.append("")
    L.append("## Notes per workload\n")
    L.append(
        f"- **R1 digits-mlp**: `sklearn.datasets.load_digits` (1797 8x8 images, pixel values 0..16\n"
        f"  divided by 16), stratified 75/25 split (`random_state=0`), `MLPClassifier(hidden_layer_sizes=(64, 32),\n"
        f"  activation='relu', solver='adam', random_state=0)` trained on {r1['n_train']} samples. Weights exported by\n"
        f"  hand: Gemm(transB=1)+Relu, Gemm+Relu, Gemm, Softmax(axis=1). The batch dimension is symbolic (`N`).\n"
        f"  The ONNX model matches `predict_proba` to {r1['sklearn_max_abs_err']:.1g} (max abs) on the whole\n"
        f"  held-out split. Golden input: the first 8 held-out samples; accuracy is the ONNX model's argmax\n"
        f"  over all {r1['n_heldout']} held-out samples in `heldout.npz`.\n"
        "- **R2 kws-dscnn**: MLPerf Tiny keyword spotting DS-CNN: Conv 64x(10x4) stride 2 with TF 'same'\n"
        "  padding (pads [4, 1, 5, 1] -> 25x5), BN, Relu; 4 x (depthwise 3x3 + BN + Relu, pointwise 1x1 64 +\n"
        "  BN + Relu); GlobalAveragePool; Flatten; Gemm to 12 logits (no softmax). Convs keep their biases\n"
        "  (Keras default). MLPerf's Keras reference (`keras_model.py`) pools with AveragePooling2D of\n"
        "  (int(49/2), int(10/2)) = 24x5 on the 25x5 map, which drops the last row; this model uses\n"
        "  GlobalAveragePool instead. Keras BN epsilon 1e-3.\n"
        "- **R3 anomaly-ae**: MLPerf Tiny anomaly detection autoencoder: Dense(128)+BN+Relu x4,\n"
        "  Dense(8)+BN+Relu, Dense(128)+BN+Relu x4, Dense(640). Gemm + BatchNormalization on a 2-D\n"
        "  [1, C] tensor. Keras BN epsilon 1e-3.\n"
        "- **R4 mobilenetv2-035**: MobileNetV2 width 0.35, torchvision layout and channel rounding\n"
        "  (`_make_divisible(c * 0.35, 8)`: stem 16, blocks 8/8/16/24/32/56/112, last conv 1280), 128x128 input,\n"
        "  expansion 6 (1 for the first block), symmetric pads, bias-free convs each followed by an un-fused\n"
        "  BatchNormalization (epsilon 1e-5), ReLU6 as `Clip(x, 0, 6)` with min/max inputs (opset 13 form),\n"
        "  residual Add where stride 1 and in == out channels. **The classifier has 10 classes, not 1000**,\n"
        "  to keep models/ small (a 1000-class head alone is 1.28M parameters).\n"
    )
    L.append(
        "The untrained models (R2-R4) use seeded He-normal weights (std sqrt(2 / fan_in)), small random\n"
        "biases, BN gamma ~ N(1, 0.1) and beta ~ N(0.5, 0.2) before a Relu/ReLU6 (N(0, 0.1) for\n"
        "MobileNetV2's linear bottlenecks). Each BN's running mean/var were set,\n"
        "layer by layer, to the statistics of its actual input on a seeded calibration batch (with 5%\n"
        "jitter), as a trained network's would be, so activations stay in a realistic range (max |x|\n"
        "over all intermediate tensors is 5-13, ReLU6 rarely clips, no blow-up through the residual\n"
        "chain) and the outputs depend on the input. The\n"
        "positive shift before each activation keeps about 70% of the units active; with zero-mean shifts\n"
        "a random BN+ReLU stack is chaotic (any perturbation, int8 weight error or float rounding, grows\n"
        "~20% per layer: R4's w8 output was off by 22% relative L2 that way), which a trained network is\n"
        "not. Golden inputs are seeded: standard normal for R2 (MFCC) and R3 (features); for R4 uniform random 8-bit\n"
        "pixels normalized with the ImageNet mean/std.\n"
    )
    L.append("## Fixtures\n")
    L.append(
        "`fixtures/` holds models for tests of the engine's guards (tract accepts a per-axis\n"
        "DequantizeLinear under an opset where it is not defined, and vendor operators by name alone),\n"
        "of the operators and kernels it adds, and of `perch quantize` on exported graphs.\n"
    )
    L.append(
        "- `fixtures/per-axis-dq-opset11.onnx`: **invalid on purpose**. Default-domain opset 11, int8 weight\n"
        "  [4, 3] -> DequantizeLinear with `axis=1` and a per-channel scale [3] (and int8 zero point [3]) ->\n"
        "  MatMul with float input `x` [1, 4] -> `y` [1, 3]. Per-axis DequantizeLinear needs opset >= 13.\n"
        f"  onnxruntime rejects it: `{fx['opset11_ort_error']}`\n"
        f"  (onnx.checker without full_check: {fx['opset11_checker']}.)\n"
        "- `fixtures/per-axis-dq-opset13.onnx`: the same graph at opset 13 (valid), with\n"
        "  `per-axis-dq-opset13.input_0.npy` / `per-axis-dq-opset13.output_0.npy` from onnxruntime.\n"
        "  The three column scales differ by up to 250x, so applying the wrong scale is visible.\n"
        "  Note: with graph optimizations on (`ORT_ENABLE_EXTENDED` and above) onnxruntime rewrites\n"
        "  DequantizeLinear->MatMul into `com.microsoft.MatMulNBits` and its output moves by\n"
        f"  {fx['opset13_ort_optimized_max_rel_diff']:.1e} relative; the golden is the unoptimized (literal) result.\n"
        "  (The w8 workloads use Gemm/Conv, which onnxruntime does not rewrite that way.)\n"
        "- `fixtures/unsupported-op.onnx`: one ONNX Runtime contrib op that the engine does not implement\n"
        "  (`com.microsoft` FusedConv, node `vendor_conv`); loading it must name the op and node.\n"
        "- `fixtures/onnx-extension-op.onnx`: one `LRN` node ([1, 4, 3, 3] float), which tract writes to\n"
        "  NNEF with its ONNX extension registry (`tract_onnx`): `perch convert` must say so.\n"
        "- `fixtures/depthwise-variants.onnx`: depthwise and grouped convolutions on one [1, 8, 13, 11]\n"
        "  input, one output per case Perch's depthwise kernels cover (5x5 stride 2 and 3x3 stride 1 with\n"
        "  asymmetric padding, a ReLU fused) or leave to tract with a reason (dilation, 7x7, stride 3,\n"
        "  groups of 4 channels, a channel multiplier of 2), with ONNX Runtime's outputs\n"
        "  (`depthwise-variants.input_0.npy`, `.output_N.npy`).\n"
        "- `fixtures/qdq-depthwise-strides.onnx`: depthwise 3x3 convolutions in QDQ form (u8, per-channel\n"
        "  i8 weights) with strides 2x1, 1x2 and 2x2, and ONNX Runtime's fused outputs.\n"
        "- `fixtures/qdq-hardswish.onnx`: element-wise regions in QDQ form as ONNX Runtime quantizes\n"
        "  MobileNetV3 (a hard-swish `x * q(x + 3) / 6`, a sigmoid and a product of x with it, a\n"
        "  squeeze-excite product), with ONNX Runtime's node-by-node outputs: the engine makes the first\n"
        "  three one lookup table each.\n"
        "- `fixtures/depthwise-nhwc.onnx`: two depthwise convolutions between transposes from and to\n"
        "  channels last (as TensorFlow conversions have them), which the engine runs channels last.\n"
        "- `fixtures/quantized-softmax.onnx`: QuantizeLinear, DequantizeLinear, Softmax, QuantizeLinear,\n"
        "  DequantizeLinear with the scales ONNX Runtime's quantizer gave a real OCR classifier, and ONNX\n"
        "  Runtime's output: tract 0.23.9 runs the middle as a lookup table and answers [1.0, 1.0].\n"
        "- `fixtures/qlinear-contrib.onnx`: every quantized `com.microsoft` operator the engine runs, and\n"
        "  the standard QLinearConv and QLinearMatMul (which tract implements), on one [1, 4, 6, 6] float\n"
        "  input quantized to uint8 (and int8), each result a graph output,\n"
        "  with ONNX Runtime's outputs (`qlinear-contrib.input_0.npy`, `.output_N.npy`), in order:\n"
        + "".join(f"  {i}. `{name}`: {what}\n" for i, (name, what) in enumerate(QLINEAR_CONTRIB_OUTPUTS))
        + "- `fixtures/exported-opset11.onnx`: a small CNN the way exporters write it, for `perch quantize`:\n"
        "  every weight and BatchNormalization parameter a `Constant` node (no initializer), each of its\n"
        "  4 Conv (one depthwise) followed by an unfolded BatchNormalization, a Gemm, a Squeeze with the\n"
        "  opset-11 `axes` attribute and a Softmax, default-domain opset 11, IR 6; input [1, 3, 16, 32],\n"
        "  6 probabilities, with ONNX Runtime's output (`exported-opset11.input_0.npy`, `.output_0.npy`).\n"
    )
    L.append("## Tabular model for /predict\n")
    L.append(
        "`iris-mlp/` is not one of R1-R4: it is the model behind perchd's `/predict`, which takes named\n"
        "features. scikit-learn's `load_iris` (150 flowers, 4 measurements in cm, 3 species), split\n"
        f"{tab['n_train']} / {tab['n_heldout']} (stratified, seed 0); a `StandardScaler` fitted on the training split and an\n"
        "`MLPClassifier` (16 relu units, softmax) on its output, exported by skl2onnx with `zipmap=False`.\n"
        "The graph keeps only the `probabilities` output (`features` [N, 4] -> `probabilities` [N, 3]; the\n"
        "label branch uses ai.onnx.ml's ArrayFeatureExtractor, which the engine does not run). The scaler\n"
        "is not in the graph: its mean and scale are the schema's per-feature `mean` and `std`, so the\n"
        "device standardizes what a request names.\n"
    )
    L.append(
        "```\n"
        "iris-mlp/model.onnx           float32, opset 13, ir_version 8, standard operators only\n"
        "iris-mlp/schema.json          the feature schema `perch pack --schema` signs into a bundle, and\n"
        "                              that perchd reads beside a plain model file\n"
        "iris-mlp/golden/input_0.npy   8 standardized held-out rows; output_0.npy onnxruntime's output\n"
        "```\n"
    )
    L.append(
        f"Held-out accuracy {tab['accuracy'] * 100:.2f}% ({tab['n_heldout']} samples); ONNX vs scikit-learn "
        f"`predict_proba` max abs difference {tab['sklearn_max_abs_err']:.2g}; {tab['params']} parameters, "
        f"{fmt_size(tab['float_bytes'])}. The first held-out flower, "
        f"{dict(zip(IRIS_FEATURES, tab['raw_first_heldout']))}, is a {tab['label_first_heldout']}.\n"
    )
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
