#!/usr/bin/env python3
"""Cold start and resident memory of perchd serving each reference model from a signed
NNEF bundle.

For each reference model (R1-R4, float): `perch convert` to NNEF, `perch pack` into a
bundle signed with a throw-away key, then, `--runs` times: start `perchd` on the bundle
(its own embedded broker on a free port, HTTP on a free port), and measure

- cold start: process start -> first answered OIP v2 inference over HTTP (the agent
  verifies the bundle, loads the model, self-tests it against its golden outputs and
  warms it up before it says ready; all of that is in the figure);
- RSS: VmRSS and VmHWM of the perchd process after 200 more inferences.

With `--mosquitto`, perchd reports to a mosquitto started here instead of its embedded
broker (the device configuration; needed for a `--no-default-features` build).

Only the standard library: run it with any python3 from the repository root, after
building the binaries (`cargo build --release -p perch-firmware -p perch-tools`):

    python3 tools/bench/coldstart.py [--perchd target/release/perchd]
        [--perch target/release/perch] [--runs 5] [--models R1,R2,R3,R4] [--out table.md]
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

MODELS = [
    ("R1", "digits-mlp"),
    ("R2", "kws-dscnn"),
    ("R3", "anomaly-ae"),
    ("R4", "mobilenetv2-035"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def npy_f32(path):
    """The shape and float32 values of a little-endian float32 .npy file."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path} is not a .npy file")
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10
    else:
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12
    header = data[start : start + hlen].decode("latin1")
    if "'<f4'" not in header:
        raise ValueError(f"{path}: only little-endian float32 is supported here: {header}")
    shape_text = header.split("'shape':")[1].split(")")[0].strip(" (")
    shape = [int(d) for d in shape_text.split(",") if d.strip()]
    body = data[start + hlen :]
    values = list(struct.unpack(f"<{len(body) // 4}f", body))
    return shape, values


def request_body(model_dir, input_name):
    shape, values = npy_f32(os.path.join(model_dir, "golden", "input_0.npy"))
    return json.dumps(
        {"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32", "data": values}]}
    ).encode()


def post(port, path, body, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_kib(pid):
    """VmRSS and VmHWM, and the RSS split into anonymous memory (heap, stacks: what
    the process really costs) and file-backed pages (mostly the executable's code,
    clean and reclaimable)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Anonymous":
                fields[key] = int(value.split()[0])
    fields["File"] = fields["VmRSS"] - fields.get("Anonymous", 0)
    return fields


def run_once(perchd, bundle, pubkey, body, name, work, broker):
    http_port = free_port()
    spool = tempfile.mkdtemp(dir=work)
    where = ["--broker", broker] if broker else ["--embedded-port", str(free_port())]
    args = [
        perchd,
        "--device-id", "coldstart",
        "--model", bundle,
        "--trusted-key", pubkey,
        *where,
        "--http-listen", f"127.0.0.1:{http_port}",
        "--spool-dir", spool,
        "--report-interval", "1h",
    ]
    env = dict(os.environ, RUST_LOG="warn")
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        path = f"/v2/models/{name}/infer"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"perchd exited: {process.stderr.read().decode()}")
            try:
                status, reply = post(http_port, path, body, timeout=10)
            except OSError:
                time.sleep(0.001)
                continue
            if status == 200:
                break
            if status != 503:
                raise RuntimeError(f"HTTP {status}: {reply[:200]!r}")
            time.sleep(0.001)
        cold = time.monotonic() - started
        for _ in range(200):
            status, reply = post(http_port, path, body)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {reply[:200]!r}")
        memory = rss_kib(process.pid)
        return cold, memory
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perchd", default="target/release/perchd")
    parser.add_argument("--perch", default="target/release/perch")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default="R1,R2,R3,R4",
                        help="which reference models, by id (default: R1,R2,R3,R4)")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--mosquitto", action="store_true",
                        help="report to a mosquitto started here, not the embedded broker")
    args = parser.parse_args()
    for binary in (args.perchd, args.perch):
        if not os.path.isfile(binary):
            parser.error(f"{binary} does not exist: build it first (see --help)")

    work = tempfile.mkdtemp(prefix="perch-coldstart-")
    broker, mosquitto = None, None
    try:
        if args.mosquitto:
            port = free_port()
            mosquitto = subprocess.Popen(
                [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            broker = f"mqtt://127.0.0.1:{port}"
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.01)
        key = os.path.join(work, "bench.key")
        subprocess.run([args.perch, "keygen", "-o", key], check=True, stdout=subprocess.DEVNULL)
        pubkey = os.path.join(work, "bench.pub")
        rows = []
        chosen = args.models.split(",")
        for rid, name in [m for m in MODELS if m[0] in chosen]:
            model_dir = os.path.join("models", name)
            nnef = os.path.join(work, f"{name}.nnef.tgz")
            subprocess.run(
                [args.perch, "convert", os.path.join(model_dir, "model.onnx"), "-o", nnef],
                check=True, stdout=subprocess.DEVNULL,
            )
            bundle = os.path.join(work, f"{name}.perch")
            subprocess.run(
                [args.perch, "pack", nnef, "--name", name, "--version", "1.0.0",
                 "--sequence", "1", "--key", key, "--golden", os.path.join(model_dir, "golden"),
                 "-o", bundle],
                check=True, stdout=subprocess.DEVNULL,
            )
            meta = json.loads(subprocess.run(
                [args.perch, "inspect", "--json", os.path.join(model_dir, "model.onnx")],
                check=True, capture_output=True,
            ).stdout)
            input_name = meta["inputs"][0]["name"]
            body = request_body(model_dir, input_name)
            colds, rss, hwm, anon = [], [], [], []
            for _ in range(args.runs):
                cold, memory = run_once(args.perchd, bundle, pubkey, body, name, work, broker)
                colds.append(cold * 1e3)
                rss.append(memory["VmRSS"] / 1024)
                hwm.append(memory["VmHWM"] / 1024)
                anon.append(memory["Anonymous"] / 1024)
            rows.append((rid, name, os.path.getsize(bundle), colds, rss, hwm, anon))
            print(f"{rid} {name}: cold start median {statistics.median(colds):.0f} ms", flush=True)

        lines = [
            f"perchd `{args.perchd}`, {args.runs} starts per model, NNEF bundles, "
            + ("mosquitto" if broker else "embedded broker"),
            "",
            "| model | bundle | cold start median (min–max) | RSS serving | of which anonymous | peak RSS | budget (2 × bundle + 15 MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for rid, name, bundle_size, colds, rss, hwm, anon in rows:
            budget = 2 * bundle_size / 2**20 + 15
            lines.append(
                f"| {rid} {name} | {bundle_size / 1024:.0f} KiB | "
                f"{statistics.median(colds):.0f} ms ({min(colds):.0f}–{max(colds):.0f}) | "
                f"{statistics.median(rss):.1f} MiB | {statistics.median(anon):.1f} MiB | "
                f"{statistics.median(hwm):.1f} MiB | {budget:.1f} MiB |"
            )
        table = "\n".join(lines)
        print()
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        if mosquitto:
            mosquitto.terminate()
            mosquitto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
