#!/usr/bin/env python3
"""Drives a running perchd with the stock Triton HTTP client, using its defaults.

    python tools/serving_check.py --url 127.0.0.1:8080 --model models/kws-dscnn

Checks what a Triton user does first, with tritonclient.http and nothing configured
(binary tensor data on, as the client sends it by default): server and model
readiness and metadata, the model configuration, the repository index, an inference
on the model's golden input compared with its golden output (binary request and
response, then JSON, then one requested output), and the statistics counting them.
Also checks KServe V1 (`/v1/models/{name}:predict`) with plain HTTP, and that a
binary body whose sizes disagree gets a 400 and leaves the server serving.

With `--repository` instead of `--model`, checks a perchd running
docs/examples/several-models.toml: the repository index, tritonclient's load_model and
unload_model, and golden inferences on two models at once.

    python tools/serving_check.py --url 127.0.0.1:8080 --repository models

Exits non-zero with one line per failed check. Needs tritonclient[http] and numpy.
"""

import argparse
import json
import pathlib
import sys
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

FAILURES = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        FAILURES.append(what)


def close(got, want, what):
    scale = max(float(np.abs(want).max()), 1e-6)
    error = float(np.abs(got - want).max()) / scale
    check(got.shape == want.shape and error <= 1e-4, f"{what}: shape {got.shape}, relative error {error:.2e}")


def post(url, body, headers=None):
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port of perchd's HTTP API")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=pathlib.Path, help="the model's folder (with golden/)")
    which.add_argument("--repository", type=pathlib.Path,
                       help="the models/ folder, for a perchd running docs/examples/several-models.toml")
    args = parser.parse_args()
    if args.repository:
        return check_repository(httpclient.InferenceServerClient(url=args.url), args.repository)
    name = args.model.name
    golden_in = np.load(args.model / "golden" / "input_0.npy").astype(np.float32)
    golden_out = np.load(args.model / "golden" / "output_0.npy").astype(np.float32)

    client = httpclient.InferenceServerClient(url=args.url)
    check(client.is_server_live() and client.is_server_ready(), "server live and ready")
    check(client.is_model_ready(name), f"{name} ready")
    server = client.get_server_metadata()
    check("binary_tensor_data" in server["extensions"], f"server extensions {server['extensions']}")

    meta = client.get_model_metadata(name)
    check(meta["name"] == name and len(meta["inputs"]) == 1, f"metadata names {name}")
    version = meta["versions"][0]
    input_meta, output_meta = meta["inputs"][0], meta["outputs"][0]

    config = client.get_model_config(name)
    check(config["name"] == name, "config names the model")
    check(config["input"][0]["data_type"] == "TYPE_FP32", f"config input {config['input'][0]}")
    dims = config["input"][0]["dims"]
    batch = config["max_batch_size"]
    want_dims = list(golden_in.shape[1:] if batch > 0 else golden_in.shape)
    check(dims == want_dims, f"config dims {dims} (max_batch_size {batch})")

    index = client.get_model_repository_index()
    # Triton's keys, and Perch's memory figures beside them (estimated_bytes for a loaded model).
    listed = [{k: e[k] for k in ("name", "version", "state") if k in e} for e in index]
    check(listed == [{"name": name, "version": version, "state": "READY"}], f"repository index {index}")
    check(all(e.get("estimated_bytes", 0) > 0 for e in index), f"repository index memory {index}")

    # The client's defaults: binary input, no outputs named, so binary_data_output.
    infer_input = httpclient.InferInput(input_meta["name"], list(golden_in.shape), "FP32")
    infer_input.set_data_from_numpy(golden_in)
    result = client.infer(name, [infer_input])
    close(result.as_numpy(output_meta["name"]), golden_out, "binary infer (client defaults)")
    check(result.get_response()["outputs"][0].get("parameters", {}).get("binary_data_size") == golden_out.nbytes,
          "the output came back as binary data")

    # JSON in and out, on the versioned path.
    json_input = httpclient.InferInput(input_meta["name"], list(golden_in.shape), "FP32")
    json_input.set_data_from_numpy(golden_in, binary_data=False)
    json_output = httpclient.InferRequestedOutput(output_meta["name"], binary_data=False)
    result = client.infer(name, [json_input], model_version=version, outputs=[json_output])
    close(result.as_numpy(output_meta["name"]), golden_out, "JSON infer, versioned path, requested output")
    check("data" in result.get_response()["outputs"][0], "the requested JSON output came back as data")

    try:
        client.infer(name, [infer_input], outputs=[httpclient.InferRequestedOutput("nope")])
        check(False, "an unknown output is refused")
    except InferenceServerException as e:
        check("unknown output \"nope\"" in str(e), f"an unknown output is refused: {e}")
    try:
        client.infer(name, [infer_input], model_version="99.0.0")
        check(False, "an unknown version is refused")
    except InferenceServerException as e:
        check("has no version 99.0.0" in str(e), f"an unknown version is refused: {e}")

    # A binary body whose declared size disagrees with the shape.
    header = json.dumps({"inputs": [{"name": input_meta["name"], "shape": list(golden_in.shape),
                                     "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}).encode()
    status, body = post(f"http://{args.url}/v2/models/{name}/infer", header + b"\0" * 8,
                        {"Inference-Header-Content-Length": str(len(header))})
    check(status == 400 and b"binary_data_size" in body, f"a wrong binary size gets 400: {status} {body[:120]!r}")
    status, body = post(f"http://{args.url}/v2/models/{name}/infer", header,
                        {"Inference-Header-Content-Length": str(len(header) + 100)})
    check(status == 400 and b"but the body is only" in body, f"a header longer than the body gets 400: {status}")

    stats = client.get_inference_statistics(name)["model_stats"][0]
    success = stats["inference_stats"]["success"]["count"]
    fail = stats["inference_stats"]["fail"]["count"]
    check((stats["name"], stats["version"]) == (name, version), f"statistics name {name} {version}")
    check(success >= 2 and fail >= 4, f"statistics count successes ({success}) and failures ({fail})")
    check(stats["execution_count"] >= 2 and stats["inference_stats"]["compute_infer"]["ns"] > 0,
          "statistics time the engine")
    all_stats = client.get_inference_statistics()
    check([s["name"] for s in all_stats["model_stats"]] == [name], "statistics of every model")

    # KServe V1, plain HTTP: one instance per batch item.
    instances = [row.tolist() for row in golden_in] if batch > 0 else [golden_in.tolist()]
    status, body = post(f"http://{args.url}/v1/models/{name}:predict", json.dumps({"instances": instances}).encode(),
                        {"Content-Type": "application/json"})
    check(status == 200, f"V1 predict answers: {status} {body[:120]!r}")
    if status == 200:
        predictions = np.array(json.loads(body)["predictions"], dtype=np.float32)
        close(predictions.reshape(golden_out.shape), golden_out, "V1 predictions")

    infer_input.set_data_from_numpy(golden_in)
    close(client.infer(name, [infer_input]).as_numpy(output_meta["name"]), golden_out, "still serving after bad input")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed for {name}", file=sys.stderr)
        return 1
    print(f"{name}: every check passed")
    return 0


def golden_infer(client, name, folder, what):
    """Infers the golden input of `folder` on the model `name` (binary, the defaults)."""
    golden_in = np.load(folder / "golden" / "input_0.npy").astype(np.float32)
    golden_out = np.load(folder / "golden" / "output_0.npy").astype(np.float32)
    meta = client.get_model_metadata(name)
    infer_input = httpclient.InferInput(meta["inputs"][0]["name"], list(golden_in.shape), "FP32")
    infer_input.set_data_from_numpy(golden_in)
    result = client.infer(name, [infer_input])
    close(result.as_numpy(meta["outputs"][0]["name"]), golden_out, what)


def check_repository(client, models):
    def states():
        return {e["name"]: e["state"] for e in client.get_model_repository_index()}

    want = {"kws-dscnn": "READY", "iris-mlp": "READY", "mobilenet": "UNAVAILABLE"}
    check(states() == want, f"repository index {client.get_model_repository_index()}")
    check(not client.is_model_ready("mobilenet"), "mobilenet not ready before its load")
    client.load_model("mobilenet")
    check(states()["mobilenet"] == "READY" and client.is_model_ready("mobilenet"), "load_model(mobilenet)")
    golden_infer(client, "kws-dscnn", models / "kws-dscnn", "kws-dscnn beside mobilenet")
    golden_infer(client, "mobilenet", models / "mobilenetv2-035", "mobilenet beside kws-dscnn")
    client.unload_model("mobilenet")
    check(states()["mobilenet"] == "UNAVAILABLE", "unload_model(mobilenet)")
    try:
        golden_infer(client, "mobilenet", models / "mobilenetv2-035", "an unloaded model")
        check(False, "an unloaded model is refused")
    except InferenceServerException as e:
        check("is not ready: unloaded" in str(e), f"an unloaded model is refused: {e}")
    try:
        client.unload_model("kws-dscnn")
        check(False, "the primary model is not unloaded")
    except InferenceServerException as e:
        check("primary model" in str(e), f"the primary model is not unloaded: {e}")
    golden_infer(client, "kws-dscnn", models / "kws-dscnn", "kws-dscnn still serving")
    names = [s["name"] for s in client.get_inference_statistics()["model_stats"]]
    check(names == ["kws-dscnn", "iris-mlp"], f"statistics of every loaded model: {names}")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed for the repository", file=sys.stderr)
        return 1
    print("repository: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
