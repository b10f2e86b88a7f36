#!/usr/bin/env python3
"""Perch's engine (tract) against ONNX Runtime on the reference models, as ratios.

For each model (models.json) and variant (float `model.onnx`, weight-only int8
`model.w8.onnx`), on the golden input, in the same script run so both share the machine's
conditions:

- ONNX Runtime, CPUExecutionProvider, 1 intra-op and 1 inter-op thread, sequential
  execution, default graph optimizations (ORT_ENABLE_ALL): what a user would run;
- the engine, through `target/release/examples/latency` (one thread; times `Session::run`);
- ONNX Runtime with its default thread count (intra_op_num_threads=0), as an extra column;
- for w8 only, ONNX Runtime 1 thread with `session.disable_quant_qdq=1`, which lets it fold
  the weights' DequantizeLinear at load (see FOLD_DQ), as an extra column.

They are measured back to back per case, their order rotating, and the whole sweep is
repeated for a few rounds; the table keeps each one's best p50 over the rounds (its p90/p99
come from that same round). Every side warms up for --warmup-ms (at least 10 runs) and then
times each run on its own (ONNX Runtime: `time.perf_counter_ns` around `InferenceSession.run`,
so Python binding overhead of a few microseconds is included; the engine: `Instant` around
`Session::run`, including input validation and copy). Quantiles are nearest-rank over the
sorted samples. GFLOP/s is MACs x 2 / p50; R1's MACs are multiplied by its golden batch (8).
An extra case R0, an ONNX Identity on R1's input shape (written to a temporary folder; needs
the onnx package), measures the fixed cost of a call on each side.

Both sides check their output against the golden output before timing.

Usage (from the workspace root; builds the example first, a no-op when it is up to date,
but ~5-10 min from scratch: the release profile uses LTO and codegen-units=1):

    tools/bench/run                  # markdown on stdout, progress on stderr
    tools/bench/run --rounds 5 --seconds 2 --out /tmp/bench.md

Needs numpy, onnx and onnxruntime: `tools/bench/run` installs them into a throw-away
virtual environment and passes its arguments on.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent.parent
MODELS = ROOT / "models"
LATENCY = ROOT / "target" / "release" / "examples" / "latency"
BUILD = ["cargo", "build", "--release", "-p", "perch-runtime", "--example", "latency"]
# By default ONNX Runtime keeps DequantizeLinear out of constant folding (for its QDQ
# fusions), so a weight-only int8 model dequantizes its weights on every run and its Conv
# nodes miss the Conv+BatchNormalization fusion and the NCHWc layout. This option folds
# them at load; measured as an extra column for the w8 variants.
FOLD_DQ = (("session.disable_quant_qdq", "1"),)
VARIANTS = [("float", "model.onnx", "output_0.npy"), ("w8", "model.w8.onnx", "output_0.w8.npy")]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def quantile(sorted_ms, q):
    """Nearest-rank quantile, as the latency example computes it."""
    rank = min(max(int(np.ceil(q * len(sorted_ms))), 1), len(sorted_ms))
    return sorted_ms[rank - 1]


def summarize(samples_ns):
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "p50_ms": quantile(ms, 0.50),
        "p90_ms": quantile(ms, 0.90),
        "p99_ms": quantile(ms, 0.99),
        "mean_ms": sum(ms) / len(ms),
        "min_ms": ms[0],
        "runs": len(ms),
    }


def ort_session(path, threads, config=()):
    so = ort.SessionOptions()
    for key, value in config:
        so.add_session_config_entry(key, value)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rel_error(got, want):
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def time_ort(path, x, want, threads, runs, warmup_ms, config=()):
    t = time.perf_counter_ns()
    sess = ort_session(path, threads, config)
    load_ms = (time.perf_counter_ns() - t) / 1e6
    feed = {sess.get_inputs()[0].name: x}
    err = rel_error(sess.run(None, feed)[0], want)
    if err > 1e-3:
        raise SystemExit(f"ONNX Runtime disagrees with the golden output of {path}: {err:.3e}")
    start, n = time.perf_counter_ns(), 0
    while n < 10 or time.perf_counter_ns() - start < warmup_ms * 1e6:
        sess.run(None, feed)
        n += 1
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        samples.append(time.perf_counter_ns() - t)
    r = summarize(samples)
    r["load_ms"] = load_ms
    r["max_rel_error"] = err
    return r


def time_tract(path, runs, warmup_ms):
    cmd = [str(LATENCY), str(path), "--runs", str(runs), "--warmup-ms", str(warmup_ms)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def identity_model(folder, x):
    """An ONNX Identity on R1's input shape, with golden files: the fixed cost of one call."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", x.shape[1]]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (folder / "golden").mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    np.save(folder / "golden" / "input_0.npy", x)
    np.save(folder / "golden" / "output_0.npy", x)
    return folder / "model.onnx"


def machine():
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"] if f in flags]
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    tract = "?"
    lock = (ROOT / "Cargo.lock").read_text().split("[[package]]")
    for pkg in lock:
        if 'name = "tract-core"' in pkg:
            tract = pkg.split('version = "')[1].split('"')[0]
    return {
        "cpu": cpu,
        "simd": " ".join(simd),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "rustc": rustc,
        "tract": tract,
    }


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="sweeps over all cases (default 3)")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="target time of one ORT 1-thread measurement; sets the run count per case (default 1)")
    ap.add_argument("--min-runs", type=int, default=100)
    ap.add_argument("--max-runs", type=int, default=20000)
    ap.add_argument("--warmup-ms", type=int, default=300)
    ap.add_argument("--models", nargs="*", help="model names (default: all in models.json)")
    ap.add_argument("--no-build", action="store_true", help=f"do not run {' '.join(BUILD)} first")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args()

    if not args.no_build:
        log("$", " ".join(BUILD))
        subprocess.run(BUILD, check=True, cwd=ROOT)
    if not LATENCY.exists():
        raise SystemExit(f"{LATENCY} is missing; run {' '.join(BUILD)}")

    specs = json.loads((MODELS / "models.json").read_text())
    if args.models:
        specs = [s for s in specs if s["name"] in args.models]
    cases = []
    for spec in specs:
        folder = ROOT / spec["folder"]
        x = np.load(folder / "golden" / "input_0.npy")
        declared = spec["inputs"][0]["shape"]
        # MACs in models.json are per sample; a symbolic leading dimension is the batch.
        batch = x.shape[0] if isinstance(declared[0], str) else 1
        for variant, file, out in VARIANTS:
            cases.append({
                "id": spec["id"], "name": spec["name"], "variant": variant,
                "path": folder / file, "x": x, "want": np.load(folder / "golden" / out),
                "macs": spec["macs"] * batch, "batch": batch, "runs": None,
                "rounds": {"tract": [], "ort1": [], "ortN": [], "ort1dq": []},
            })

    # Per-call overhead: ORT's Python binding and Perch's Session::run around an Identity.
    tmp = tempfile.TemporaryDirectory()
    x = np.load(MODELS / "digits-mlp" / "golden" / "input_0.npy")
    cases.insert(0, {
        "id": "R0", "name": "identity", "variant": "float",
        "path": identity_model(Path(tmp.name) / "identity", x), "x": x, "want": x,
        "macs": 0, "batch": x.shape[0], "runs": None,
        "rounds": {"tract": [], "ort1": [], "ortN": [], "ort1dq": []},
    })

    info = machine()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    log(f"{info['cpu']}, {info['nproc']} CPUs, load {load_before}")

    for rnd in range(args.rounds):
        for i, case in enumerate(cases):
            if case["runs"] is None:
                probe = time_ort(case["path"], case["x"], case["want"], 1, 20, args.warmup_ms)
                runs = int(args.seconds * 1e3 / max(probe["p50_ms"], 1e-6))
                case["runs"] = min(max(runs, args.min_runs), args.max_runs)
            runs = case["runs"]
            jobs = [
                ("ort1", lambda c=case: time_ort(c["path"], c["x"], c["want"], 1, runs, args.warmup_ms)),
                ("tract", lambda c=case: time_tract(c["path"], runs, args.warmup_ms)),
                ("ortN", lambda c=case: time_ort(c["path"], c["x"], c["want"], 0, runs, args.warmup_ms)),
            ]
            if case["variant"] != "float":
                jobs.append(("ort1dq", lambda c=case: time_ort(
                    c["path"], c["x"], c["want"], 1, runs, args.warmup_ms, FOLD_DQ)))
            shift = (rnd + i) % len(jobs)
            for key, job in jobs[shift:] + jobs[:shift]:
                r = job()
                case["rounds"][key].append(r)
                log(f"round {rnd + 1}/{args.rounds} {case['name']:16} {case['variant']:5} {key:5} "
                    f"p50 {r['p50_ms']:.4f} ms  p99 {r['p99_ms']:.4f} ms  ({runs} runs)")

    load_after = loadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    md = report(cases, info, started, finished, load_before, load_after, args)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")


def best(rounds):
    return min(rounds, key=lambda r: r["p50_ms"])


def gflops(macs, ms):
    return f"{macs * 2 / (ms * 1e-3) / 1e9:.2f}" if macs else "—"


def fmt_ms(ms):
    return f"{ms:.5f}" if ms < 0.01 else f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def report(cases, info, started, finished, load_before, load_after, args):
    lines = []
    lines.append(f"Machine: {info['cpu']} ({info['simd']}), {info['nproc']} CPUs available "
                 f"(os.cpu_count {info['cpu_count']}), Linux {info['kernel']}. "
                 f"Load average {load_before} before, {load_after} after.")
    lines.append(f"Software: tract {info['tract']} ({info['rustc']}, release profile: LTO, codegen-units=1), "
                 f"onnxruntime {info['onnxruntime']} (Python {info['python']}, numpy {info['numpy']}).")
    lines.append(f"Date: {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC. "
                 f"{args.rounds} rounds, best-of-rounds p50; warm-up {args.warmup_ms} ms per measurement.")
    lines.append("Command (from the workspace root): `tools/bench/run"
                 + "".join(f" {a}" for a in sys.argv[1:]) + "`")
    lines.append("")
    overhead = next(c for c in cases if c["name"] == "identity")
    t_oh = best(overhead["rounds"]["tract"])["p50_ms"]
    o_oh = best(overhead["rounds"]["ort1"])["p50_ms"]
    lines.append("R0 is an ONNX Identity on R1's input: the fixed cost of one call (ORT: the Python binding; "
                 "tract: Perch's input checks and copy). *tract / ORT 1t, R0 subtracted* takes it out of "
                 "both sides, which matters for the microsecond models.")
    lines.append("")
    lines.append("| model | variant | MACs / run | runs | tract p50 ms | ORT 1t p50 ms | **tract / ORT 1t** "
                 "| ORT all-threads p50 ms | tract / ORT all | tract / ORT 1t, R0 subtracted "
                 "| ORT 1t DQ folded p50 ms | tract / ORT DQ folded "
                 "| tract GFLOP/s | ORT 1t GFLOP/s | tract p99 ms | ORT 1t p99 ms |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        t, o1, on = best(c["rounds"]["tract"]), best(c["rounds"]["ort1"]), best(c["rounds"]["ortN"])
        if c["rounds"]["ort1dq"]:
            dq = best(c["rounds"]["ort1dq"])
            dq_cols = f"{fmt_ms(dq['p50_ms'])} | {t['p50_ms'] / dq['p50_ms']:.2f}"
        else:
            dq_cols = "— | —"
        if c is overhead:
            adjusted = "—"
        else:
            adjusted = f"{(t['p50_ms'] - t_oh) / max(o1['p50_ms'] - o_oh, 1e-9):.2f}"
        name = f"{c['id']} {c['name']}" + (f" (batch {c['batch']})" if c["batch"] > 1 else "")
        lines.append(
            f"| {name} | {c['variant']} | {c['macs']:,} | {c['runs']} | {fmt_ms(t['p50_ms'])} | {fmt_ms(o1['p50_ms'])} "
            f"| **{t['p50_ms'] / o1['p50_ms']:.2f}** | {fmt_ms(on['p50_ms'])} | {t['p50_ms'] / on['p50_ms']:.2f} "
            f"| {adjusted} | {dq_cols} | {gflops(c['macs'], t['p50_ms'])} | {gflops(c['macs'], o1['p50_ms'])} "
            f"| {fmt_ms(t['p99_ms'])} | {fmt_ms(o1['p99_ms'])} |")
    lines.append("")
    lines.append("p50 of every round (ms), tract / ORT 1t / ORT all-threads, to show the noise:")
    lines.append("")
    lines.append("| model | variant | tract | ORT 1t | ORT all | ORT 1t DQ folded | tract load ms | ORT load ms |")
    lines.append("|---|---|---|---|---|---|---:|---:|")
    for c in cases:
        row = [" ".join(fmt_ms(r["p50_ms"]) for r in c["rounds"][k]) or "—"
               for k in ("tract", "ort1", "ortN", "ort1dq")]
        t_load = min(r["load_ms"] for r in c["rounds"]["tract"])
        o_load = min(r["load_ms"] for r in c["rounds"]["ort1"])
        lines.append(f"| {c['id']} {c['name']} | {c['variant']} | {row[0]} | {row[1]} | {row[2]} | {row[3]} "
                     f"| {t_load:.1f} | {o_load:.1f} |")
    lines.append("")
    lines.append("w8 / float p50 (same engine; < 1 means int8 weights are faster):")
    lines.append("")
    lines.append("| model | tract | ORT 1t | ORT 1t, w8 with DQ folded |")
    lines.append("|---|---:|---:|---:|")
    by = {(c["id"], c["variant"]): c for c in cases}
    for c in cases:
        if c["variant"] != "float" or (c["id"], "w8") not in by:
            continue
        w = by[(c["id"], "w8")]
        ratios = [best(w["rounds"][k])["p50_ms"] / best(c["rounds"][f])["p50_ms"]
                  for k, f in (("tract", "tract"), ("ort1", "ort1"), ("ort1dq", "ort1"))]
        lines.append(f"| {c['id']} {c['name']} | {ratios[0]:.2f} | {ratios[1]:.2f} | {ratios[2]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
