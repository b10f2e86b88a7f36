#![cfg(feature = "std")]
//! Every parser of untrusted bytes, fed random and mutated inputs: none may panic,
//! and none may allocate beyond its input (a terabyte request aborts the process, which
//! this test binary would show). Property tests, so that they run in `cargo test
//! --workspace` on stable, in seconds (issue 15); the cargo-fuzz targets in `fuzz/` search
//! the same parsers guided by coverage (README, "Fuzzing"), from the seeds the ignored
//! test at the end writes. A crash found either way becomes a named regression test
//! beside the parser.

use perch_runtime::bundle::{Bundle, Limits, Manifest};
use perch_runtime::engine::internal::npy;
use perch_runtime::rollout::{decode_chunk, encode_chunk, DeviceStatus, RolloutDocument};
use perch_runtime::wire::{Health, MetricsReport};
use proptest::prelude::*;

/// A valid `.npy` file of `n` little-endian f32 under a version 1.0 header.
fn npy_f32(shape: &str, n: usize) -> Vec<u8> {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let header = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 4 * n));
    bytes
}

/// `bytes` with `edits` applied: (position, new byte), positions wrapped.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, b) in edits {
            let len = bytes.len();
            bytes[at % len] = b;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn npy_decoding_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = npy::decode(&bytes);
    }

    #[test]
    fn npy_decoding_never_panics_on_mutated_files(
        edits in proptest::collection::vec((0usize..256, any::<u8>()), 1..8),
        truncate in 0usize..200,
    ) {
        let mut bytes = mutate(npy_f32("(2, 3)", 6), &edits);
        bytes.truncate(bytes.len().saturating_sub(truncate));
        if let Ok(tensor) = npy::decode(&bytes) {
            // Whatever decodes holds no more data than the file.
            prop_assert!(tensor.len() * 8 <= bytes.len());
        }
    }

    #[test]
    fn npy_headers_with_any_shape_text_never_panic(shape in "\\(([0-9]{0,22}, ?){0,5}\\)") {
        let _ = npy::decode(&npy_f32(&shape, 4));
    }

    #[test]
    fn bundle_parsing_never_panics_on_random_or_tar_like_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ustar in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if ustar && bytes.len() > 262 {
            bytes[257..262].copy_from_slice(b"ustar");
        }
        let _ = Bundle::from_vec(bytes, &Limits::default());
    }

    #[test]
    fn manifests_documents_and_statuses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Manifest::from_json(&bytes);
        let _ = RolloutDocument::verify(&bytes, &[]);
        let _ = DeviceStatus::from_json(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics_the_json_parsers(text in "\\{(\"[a-z_]{1,12}\": ?(\"[a-z0-9.]{0,8}\"|[0-9]{1,20}|null|\\[\\]), ?){0,8}\\}") {
        let _ = Manifest::from_json(text.as_bytes());
        let _ = RolloutDocument::verify(text.as_bytes(), &[]);
        let _ = DeviceStatus::from_json(text.as_bytes());
    }

    #[test]
    fn chunk_frames_never_panic_and_round_trip(
        id in "[a-z0-9-]{0,64}",
        index in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        edits in proptest::collection::vec((0usize..512, any::<u8>()), 0..4),
        truncate in 0usize..64,
    ) {
        let frame = encode_chunk(&id, index, &data);
        let chunk = decode_chunk(&frame).unwrap();
        prop_assert_eq!((chunk.rollout_id, chunk.index, chunk.data), (id.as_str(), index, &data[..]));
        let mut bad = mutate(frame, &edits);
        bad.truncate(bad.len().saturating_sub(truncate));
        let _ = decode_chunk(&bad);
    }

    #[test]
    fn postcard_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = MetricsReport::decode(&bytes);
        let _ = Health::decode(&bytes);
    }
}

/// Writes the seed corpus of the cargo-fuzz targets (`fuzz/corpus/<target>/`, README
/// "Fuzzing") from the reference models and this crate's own encoders, with the key the
/// targets trust (`[7; 32]`), so that a seed bundle or document also passes its signature
/// check. Ignored: run it when a format changes, and commit what it writes.
/// `cargo test -p perch-runtime --test fuzz -- --ignored writes_the_fuzz_seed_corpus`
#[test]
#[ignore = "writes fuzz/corpus; run by hand when a format changes"]
fn writes_the_fuzz_seed_corpus() {
    use std::path::{Path, PathBuf};

    use perch_runtime::bundle::{
        pack, BundleContents, ModelKind, SigningKey, Slo, TensorSignature,
    };
    use perch_runtime::engine::{LoadOptions, Model};
    use perch_runtime::histogram::Histogram;
    use perch_runtime::rollout::{
        BundleRef, ChunkRequest, DeviceState, Phase, FORMAT, MIN_CHUNK_SIZE,
    };
    use perch_runtime::wire::{ModelId, ModelState, Version, FORMAT_VERSION};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = root.join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let read = |path: PathBuf| std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let key = SigningKey::from_bytes(&[7; 32]);

    // A real bundle: the tabular reference model (R5, 1.3 kB) with its golden data.
    let iris = root.join("models/iris-mlp");
    let model_bytes = read(iris.join("model.onnx"));
    let model = Model::load(iris.join("model.onnx"), &LoadOptions::new()).unwrap();
    let contents = BundleContents {
        name: "iris".into(),
        version: "1.0.0".parse().unwrap(),
        sequence: 3,
        created_unix: 1_764_133_800,
        model_format: ModelKind::Onnx,
        model: model_bytes.clone(),
        signature: TensorSignature::from_metadata(model.metadata()),
        golden_inputs: vec![read(iris.join("golden/input_0.npy"))],
        golden_outputs: vec![read(iris.join("golden/output_0.npy"))],
        tolerance: 1e-4,
        slo: Slo {
            p99_ms: Some(5.0),
            max_error_rate: Some(0.01),
            min_throughput: Some(100.0),
        },
        schema: None,
    };
    let bundle = pack(&contents, &key).unwrap();
    write("bundle", "iris-1.0.0.perch", bundle.as_bytes());
    write("manifest", "iris-1.0.0.json", bundle.manifest_bytes());
    write(
        "manifest",
        "kws-1.2.0.json",
        &read(root.join("runtime/src/bundle/testdata/manifest.json")),
    );

    // .npy: golden files of every element type the models have, and the header forms
    // the reader accepts (versions 1.0 and 2.0, Fortran order, a scalar, an empty array).
    for (name, path) in [
        ("iris-input.npy", "models/iris-mlp/golden/input_0.npy"),
        ("iris-output.npy", "models/iris-mlp/golden/output_0.npy"),
        ("digits-labels.npy", "models/digits-mlp/golden/labels_0.npy"),
    ] {
        write("npy", name, &read(root.join(path)));
    }
    let npy = |version: u8, header: &str, data: &[u8]| {
        let mut bytes = vec![0x93, b'N', b'U', b'M', b'P', b'Y', version, 0];
        if version == 1 {
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    };
    let dict = |descr: &str, fortran: bool, shape: &str| {
        let fortran = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n")
    };
    write(
        "npy",
        "f8-v2.npy",
        &npy(2, &dict("<f8", false, "(2,)"), &[0; 16]),
    );
    write(
        "npy",
        "u1-fortran.npy",
        &npy(1, &dict("|u1", true, "(2, 3)"), &[1, 2, 3, 4, 5, 6]),
    );
    write(
        "npy",
        "i4-scalar.npy",
        &npy(1, &dict("<i4", false, "()"), &[7, 0, 0, 0]),
    );
    write(
        "npy",
        "i1-empty.npy",
        &npy(1, &dict("|i1", false, "(0, 4)"), &[]),
    );

    // ONNX: the reference tabular model and the small fixtures the guards refuse or pass.
    write("onnx_guards", "iris-mlp.onnx", &model_bytes);
    for name in [
        "onnx-extension-op",
        "per-axis-dq-opset11",
        "per-axis-dq-opset13",
        "qlinear-contrib",
        "quantized-softmax",
        "unsupported-op",
        "depthwise-nhwc",
    ] {
        let path = root.join(format!("models/fixtures/{name}.onnx"));
        write("onnx_guards", &format!("{name}.onnx"), &read(path));
    }

    // Rollout documents (signed, and the document alone), a status report, a chunk request.
    let document = RolloutDocument {
        format: FORMAT,
        group: "kitchen".into(),
        rollout_id: "iris-1.0.0-a".into(),
        revision: 1_790_000_000_000,
        issued: "2026-11-26T12:00:00Z".into(),
        phase: Phase::Running,
        percent_bp: 1_000,
        soak_s: 60,
        soak_min_requests: 100,
        fresh_s: 600,
        expires_unix_s: 0,
        model: None,
        bundle: BundleRef::describe("iris", "1.0.0", 3, bundle.as_bytes(), MIN_CHUNK_SIZE),
    };
    write("rollout", "signed-document.json", &document.sign(&key));
    write(
        "rollout",
        "document.json",
        &serde_json::to_vec(&document).unwrap(),
    );
    let status = DeviceStatus {
        format: FORMAT,
        device: "pi-kitchen-01".into(),
        rollout_id: "iris-1.0.0-a".into(),
        revision: 1_790_000_000_000,
        version: "1.0.0".into(),
        sequence: 3,
        bucket: 412,
        state: DeviceState::RolledBack,
        progress_pct: Some(100),
        reason: Some("p99 12.5 ms over the SLO's 5 ms".into()),
        serving: "iris 0.9.0".into(),
        model: None,
        update: 4,
        frozen: true,
    };
    write("rollout", "status.json", &status.to_json());
    let request = ChunkRequest {
        rollout_id: "iris-1.0.0-a".into(),
        index: 2,
    };
    write(
        "rollout",
        "chunk-request.json",
        &serde_json::to_vec(&request).unwrap(),
    );

    // Chunk frames: the bundle's first chunk and a short last one.
    let bytes = bundle.as_bytes();
    let chunk = MIN_CHUNK_SIZE as usize;
    write(
        "chunk",
        "first.bin",
        &encode_chunk("iris-1.0.0-a", 0, &bytes[..chunk]),
    );
    let last = (bytes.len() - 1) / chunk;
    write(
        "chunk",
        "last.bin",
        &encode_chunk("iris-1.0.0-a", last as u32, &bytes[last * chunk..]),
    );

    // Wire messages: a metrics report with latencies in several buckets, health messages.
    let mut latency = Histogram::new();
    for us in [3, 850, 850, 12_000, 2_500_000, 20_000_000] {
        latency.record(std::time::Duration::from_micros(us));
    }
    let report = MetricsReport {
        format: FORMAT_VERSION,
        seq: 70_000,
        uptime_s: 86_400,
        interval_ms: 60_000,
        model: ModelId::new("iris", Version::new(1, 0, 0)).unwrap(),
        ok: 1_000,
        errors: 2,
        latency,
    };
    let mut buf = [0; MetricsReport::MAX_ENCODED_LEN];
    write("wire", "metrics.bin", report.encode(&mut buf).unwrap());
    for (name, model, state, last_error) in [
        ("health-ready.bin", true, ModelState::Ready, None),
        (
            "health-failed.bin",
            true,
            ModelState::SelfTestFailed,
            Some("golden output 0 off by 3.2e-2"),
        ),
        ("health-no-model.bin", false, ModelState::NoModel, None),
    ] {
        let health = Health {
            format: FORMAT_VERSION,
            uptime_s: 300,
            model: model.then(|| ModelId::new("iris", Version::new(1, 0, 0)).unwrap()),
            state,
            boot_count: 4,
            rss_kib: 18_432,
            last_error: last_error.map(perch_runtime::wire::truncated),
        };
        let mut buf = [0; Health::MAX_ENCODED_LEN];
        write("wire", name, health.encode(&mut buf).unwrap());
    }
}
