//! `perch keygen`, `pack`, `verify` and `run` on bundles, as a user runs them: real
//! keys, real signatures, real files in temporary folders.

use crate::{json, keygen, models, perch};

use std::path::{Path, PathBuf};

use perch_runtime::engine::internal::ArrayExt;
use perch_runtime::engine::read_npy;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `perch pack` of R2 (kws-dscnn) with its golden folder, signed with `key`.
fn pack_r2(dir: &Path, key: &Path) -> PathBuf {
    let out = dir.join("kws.perch");
    perch()
        .arg("pack")
        .arg(models().join("kws-dscnn/model.onnx"))
        .args(["--name", "kws", "--version", "1.2.0", "--sequence", "7"])
        .args(["--p99-ms", "10", "--max-error-rate", "0.01"])
        .arg("--key")
        .arg(key)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    out
}

fn verify(bundle: &Path, pubkey: &Path) -> std::process::Output {
    perch()
        .arg("verify")
        .arg(bundle)
        .arg("--pubkey")
        .arg(pubkey)
        .output()
        .unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

mod keygen {
    use super::*;

    #[test]
    fn keygen_writes_a_private_secret_key_and_a_public_key_and_prints_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = perch()
            .args(["keygen", "--json", "-o"])
            .arg(dir.path().join("fleet.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let report = json(&out.stdout);
        let public =
            perch_runtime::bundle::read_verifying_key(dir.path().join("fleet.pub")).unwrap();
        assert_eq!(report["key_id"], perch_runtime::bundle::key_id(&public));
        assert_eq!(files_in(dir.path()), ["fleet.key", "fleet.pub"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("fleet.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn keygen_refuses_to_overwrite_an_existing_key_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let before = std::fs::read(&secret).unwrap();
        let out = perch()
            .arg("keygen")
            .arg("-o")
            .arg(&secret)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
        assert_eq!(std::fs::read(&secret).unwrap(), before);

        let old_public = std::fs::read(&public).unwrap();
        perch()
            .arg("keygen")
            .arg("-o")
            .arg(&secret)
            .arg("--force")
            .assert()
            .success();
        assert_ne!(std::fs::read(&secret).unwrap(), before);
        assert_ne!(std::fs::read(&public).unwrap(), old_public);
    }
}

mod pack_and_verify {
    use super::*;

    #[test]
    fn a_packed_bundle_verifies_with_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let out = verify(&bundle, &public);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("OK"), "{text}");
        assert!(text.contains("kws 1.2.0 (sequence 7)"), "{text}");

        let out = perch()
            .args(["verify", "--json"])
            .arg(&bundle)
            .arg("--pubkey")
            .arg(&public)
            .output()
            .unwrap();
        let report = json(&out.stdout);
        assert_eq!(report["ok"], true);
        assert_eq!(report["manifest"]["sequence"], 7);
        assert_eq!(report["manifest"]["slo"]["p99_ms"], 10.0);
        assert_eq!(report["manifest"]["signature"]["inputs"][0]["name"], "mfcc");
        assert_eq!(report["key_file"], public.display().to_string());
        // Nothing but the keys and the bundle: no temporary left behind.
        assert_eq!(
            files_in(dir.path()),
            ["fleet.key", "fleet.pub", "kws.perch"]
        );
    }

    #[test]
    fn a_flipped_byte_in_the_model_fails_verification_naming_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let mut bytes = std::fs::read(&bundle).unwrap();
        let model = std::fs::read(models().join("kws-dscnn/model.onnx")).unwrap();
        let start = bytes.windows(256).position(|w| w == &model[..256]).unwrap();
        bytes[start + model.len() / 2] ^= 0x20;
        std::fs::write(&bundle, &bytes).unwrap();

        let out = verify(&bundle, &public);
        assert_eq!(out.status.code(), Some(1));
        let message = stderr(&out);
        assert!(message.contains("\"model.onnx\""), "{message}");
        assert!(message.contains("sha256"), "{message}");

        let out = perch()
            .args(["verify", "--json"])
            .arg(&bundle)
            .arg("--pubkey")
            .arg(&public)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(json(&out.stdout)["failure"]["kind"], "hash_mismatch");
    }

    #[test]
    fn an_edited_manifest_fails_the_signature_check() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let mut bytes = std::fs::read(&bundle).unwrap();
        // Raise the sequence number 7 → 9 in place: same length, valid JSON, but unsigned.
        let needle = b"\"sequence\": 7,";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[at + needle.len() - 2] = b'9';
        std::fs::write(&bundle, &bytes).unwrap();

        let out = verify(&bundle, &public);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    }

    #[test]
    fn a_bundle_checked_against_the_wrong_public_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let (_, other) = keygen(dir.path(), "other");
        let bundle = pack_r2(dir.path(), &secret);
        let out = verify(&bundle, &other);
        assert_eq!(out.status.code(), Some(1));
        let message = stderr(&out);
        assert!(message.contains("not trusted"), "{message}");
    }

    #[test]
    fn any_one_of_several_trusted_keys_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let (_, other) = keygen(dir.path(), "other");
        let bundle = pack_r2(dir.path(), &secret);
        perch()
            .arg("verify")
            .arg(&bundle)
            .arg("--pubkey")
            .arg(&other)
            .arg("--pubkey")
            .arg(&public)
            .assert()
            .success();
    }

    #[test]
    fn verify_with_self_test_runs_the_golden_check() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let out = perch()
            .args(["verify", "--self-test", "--json"])
            .arg(&bundle)
            .arg("--pubkey")
            .arg(&public)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let report = json(&out.stdout);
        let output = &report["self_test"]["outputs"][0];
        assert_eq!(output["name"], "logits");
        assert!(
            output["relative_error"].as_f64().unwrap() <= 1e-4,
            "{report}"
        );
    }

    #[test]
    fn an_unreadable_key_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let out = verify(&bundle, &dir.path().join("missing.pub"));
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("missing.pub"), "{}", stderr(&out));
        // The secret key where a public key belongs is caught, not misread.
        let out = verify(&bundle, &secret);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("secret key file"), "{}", stderr(&out));
    }

    #[test]
    fn a_truncated_bundle_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let bytes = std::fs::read(&bundle).unwrap();
        std::fs::write(&bundle, &bytes[..bytes.len() / 2]).unwrap();
        let out = verify(&bundle, &public);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    }

    #[test]
    fn packing_twice_with_a_fixed_source_date_gives_identical_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let mut bundles = vec![];
        for name in ["a.perch", "b.perch"] {
            let out = dir.path().join(name);
            perch()
                .env("SOURCE_DATE_EPOCH", "1764133800")
                .arg("pack")
                .arg(models().join("digits-mlp/model.onnx"))
                .args(["--name", "digits", "--version", "2.0.0", "--sequence", "3"])
                .arg("--key")
                .arg(&secret)
                .arg("-o")
                .arg(&out)
                .assert()
                .success();
            bundles.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(bundles[0], bundles[1]);
        let bundle = perch_runtime::bundle::Bundle::parse(
            &bundles[0],
            &perch_runtime::bundle::Limits::default(),
        )
        .unwrap();
        assert_eq!(bundle.manifest().created, "2025-11-26T05:10:00Z");
    }
}

mod pack_refusals {
    use super::*;

    #[test]
    fn pack_refuses_a_model_that_fails_its_golden_self_test_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        // The float autoencoder with its int8 twin's outputs as golden: > 1e-4 apart.
        let golden = dir.path().join("golden");
        std::fs::create_dir(&golden).unwrap();
        let source = models().join("anomaly-ae/golden");
        std::fs::copy(source.join("input_0.npy"), golden.join("input_0.npy")).unwrap();
        std::fs::copy(source.join("output_0.w8.npy"), golden.join("output_0.npy")).unwrap();
        let out = perch()
            .arg("pack")
            .arg(models().join("anomaly-ae/model.onnx"))
            .args(["--name", "ae", "--version", "1.0.0", "--sequence", "1"])
            .arg("--key")
            .arg(&secret)
            .arg("--golden")
            .arg(&golden)
            .arg("-o")
            .arg(dir.path().join("ae.perch"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let message = stderr(&out);
        assert!(message.contains("self-test"), "{message}");
        assert!(message.contains("relative error"), "{message}");
        assert_eq!(files_in(dir.path()), ["fleet.key", "fleet.pub", "golden"]);
    }

    #[test]
    fn pack_refuses_a_model_the_engine_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let out = perch()
            .arg("pack")
            .arg(models().join("fixtures/unsupported-op.onnx"))
            .args(["--name", "x", "--version", "1.0.0", "--sequence", "1"])
            .arg("--key")
            .arg(&secret)
            .arg("--golden")
            .arg(models().join("digits-mlp/golden"))
            .arg("-o")
            .arg(dir.path().join("x.perch"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("FusedConv"), "{}", stderr(&out));
        assert_eq!(files_in(dir.path()), ["fleet.key", "fleet.pub"]);
    }

    #[test]
    fn pack_refuses_a_version_that_is_not_semver() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let out = perch()
            .arg("pack")
            .arg(models().join("digits-mlp/model.onnx"))
            .args(["--name", "digits", "--version", "1.2", "--sequence", "1"])
            .arg("--key")
            .arg(&secret)
            .arg("-o")
            .arg(dir.path().join("d.perch"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("semantic version"),
            "{}",
            stderr(&out)
        );
        assert!(!dir.path().join("d.perch").exists());
    }
}

mod run {
    use super::*;

    fn run_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
        let out = perch()
            .arg("run")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        json(&out.stdout)
    }

    fn values(report: &serde_json::Value) -> Vec<f64> {
        report["outputs"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    #[test]
    fn running_a_bundle_checks_its_golden_outputs_and_says_whether_the_signature_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);

        let report = run_json(&[bundle.as_os_str()]);
        assert_eq!(report["golden"]["passed"], true, "{report}");
        assert_eq!(report["bundle"]["name"], "kws");
        assert_eq!(report["bundle"]["signature_checked"], false);
        let text = perch().arg("run").arg(&bundle).output().unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("signature NOT checked"),
            "{}",
            String::from_utf8_lossy(&text.stdout)
        );

        let report = run_json(&[bundle.as_os_str(), "--pubkey".as_ref(), public.as_os_str()]);
        assert_eq!(report["bundle"]["signature_checked"], true);

        let (_, other) = keygen(dir.path(), "other");
        let out = perch()
            .arg("run")
            .arg(&bundle)
            .arg("--pubkey")
            .arg(&other)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));
    }

    #[test]
    fn a_bundle_is_recognized_by_its_content_without_the_perch_extension() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let renamed = dir.path().join("kws.bin");
        std::fs::rename(&bundle, &renamed).unwrap();
        let report = run_json(&[renamed.as_os_str()]);
        assert_eq!(report["bundle"]["name"], "kws");
        assert_eq!(report["golden"]["passed"], true, "{report}");
    }

    #[test]
    fn npz_and_open_inference_protocol_json_inputs_give_the_same_outputs_as_npy() {
        use ndarray_npy::NpzWriter;

        let dir = tempfile::tempdir().unwrap();
        let model = models().join("kws-dscnn/model.onnx");
        let npy = models().join("kws-dscnn/golden/input_0.npy");
        let tensor = read_npy(&npy).unwrap();
        let array = tensor.tensor().to_plain_array_view::<f32>().unwrap();

        let named = dir.path().join("named.npz");
        let mut npz = NpzWriter::new(std::fs::File::create(&named).unwrap());
        npz.add_array("mfcc", &array).unwrap();
        npz.finish().unwrap();
        let positional = dir.path().join("positional.npz");
        let mut npz = NpzWriter::new(std::fs::File::create(&positional).unwrap());
        npz.add_array("arr_0", &array).unwrap();
        npz.finish().unwrap();

        let data: Vec<f32> = array.iter().copied().collect();
        let oip = dir.path().join("request.json");
        std::fs::write(
            &oip,
            serde_json::to_vec(&serde_json::json!({
                "id": "42",
                "inputs": [{"name": "mfcc", "shape": tensor.shape(), "datatype": "FP32", "data": data}],
            }))
            .unwrap(),
        )
        .unwrap();
        let plain = dir.path().join("plain.json");
        std::fs::write(
            &plain,
            serde_json::to_vec(&serde_json::json!({"inputs": [{"data": data}]})).unwrap(),
        )
        .unwrap();

        let run = |input: &Path| {
            values(&run_json(&[
                "--input".as_ref(),
                input.as_os_str(),
                model.as_os_str(),
            ]))
        };
        let expected = run(&npy);
        assert_eq!(expected.len(), 12);
        for input in [&named, &positional, &oip, &plain] {
            assert_eq!(run(input), expected, "{}", input.display());
        }
    }

    #[test]
    fn a_json_input_with_the_wrong_number_of_values_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let request = dir.path().join("short.json");
        std::fs::write(
            &request,
            r#"{"inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
        )
        .unwrap();
        let out = perch()
            .arg("run")
            .arg("--input")
            .arg(&request)
            .arg(models().join("kws-dscnn/model.onnx"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let message = stderr(&out);
        assert!(message.contains("short.json"), "{message}");
        assert!(message.contains("490 values"), "{message}");
    }

    #[test]
    fn the_bundle_model_loader_accepts_models_and_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(dir.path(), "fleet");
        let bundle = pack_r2(dir.path(), &secret);
        let options = perch_runtime::engine::LoadOptions::new();
        let (model, manifest) = perch_tools::bundle::load_model(&bundle, &options).unwrap();
        assert_eq!(manifest.unwrap().name, "kws");
        assert_eq!(model.metadata().inputs[0].name, "mfcc");
        let (_, manifest) =
            perch_tools::bundle::load_model(&models().join("kws-dscnn/model.onnx"), &options)
                .unwrap();
        assert!(manifest.is_none());
    }
}

/// `perch pack --schema`: the feature schema `/predict` uses, signed into the manifest.
mod schema {
    use super::*;

    fn pack_iris(dir: &Path, schema: &Path) -> std::process::Output {
        let (secret, _) = keygen(dir, "fleet");
        perch()
            .arg("pack")
            .arg(models().join("iris-mlp/model.onnx"))
            .args(["--name", "iris", "--version", "1.0.0", "--sequence", "1"])
            .arg("--key")
            .arg(&secret)
            .arg("--schema")
            .arg(schema)
            .arg("-o")
            .arg(dir.join("iris.perch"))
            .output()
            .unwrap()
    }

    #[test]
    fn a_toml_schema_is_signed_into_the_manifest_and_verify_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("schema.toml");
        std::fs::write(
            &toml,
            r#"labels = ["setosa", "versicolor", "virginica"]
[[features]]
name = "sepal_length"
type = "numeric"
mean = 5.8
std = 0.8
[[features]]
name = "sepal_width"
type = "numeric"
[[features]]
name = "petal"
type = "categorical"
categories = ["short", "long"]
"#,
        )
        .unwrap();
        let out = pack_iris(dir.path(), &toml);
        assert!(out.status.success(), "{}", stderr(&out));
        let report = verify(
            &dir.path().join("iris.perch"),
            &dir.path().join("fleet.pub"),
        );
        let text = String::from_utf8_lossy(&report.stdout);
        assert!(
            text.contains(
                "schema   3 feature(s) filling 4 column(s), labels setosa, versicolor, virginica"
            ),
            "{text}"
        );
        assert!(
            text.contains("petal                    one-hot of short, long"),
            "{text}"
        );
        let bundle = perch_runtime::bundle::Bundle::read_file(
            dir.path().join("iris.perch"),
            &perch_runtime::bundle::Limits::default(),
        )
        .unwrap();
        let schema = bundle.manifest().schema.clone().unwrap();
        assert_eq!(schema.width(), 4);
        assert_eq!(schema.features[1].name(), "sepal_width");

        let inspected = perch()
            .arg("inspect")
            .arg(dir.path().join("iris.perch"))
            .output()
            .unwrap();
        assert!(inspected.status.success(), "{}", stderr(&inspected));
        let text = String::from_utf8_lossy(&inspected.stdout);
        assert!(
            text.contains("bundle     iris 1.0.0 (sequence 1), model.onnx model"),
            "{text}"
        );
        assert!(
            text.contains("sepal_length             numeric, (x - 5.8) / 0.8"),
            "{text}"
        );
        assert!(text.contains("input      features f32 [N,4]"), "{text}");
    }

    #[test]
    fn a_json_schema_that_does_not_fit_the_model_writes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("schema.json");
        std::fs::write(
            &json,
            r#"{"features": [{"name": "x", "type": "numeric"}], "labels": ["a", "b", "c"]}"#,
        )
        .unwrap();
        let out = pack_iris(dir.path(), &json);
        assert_eq!(out.status.code(), Some(2));
        let message = stderr(&out);
        assert!(
            message.contains("the features fill a row of 1 f32 columns, but the model's input \"features\" is f32 [N, 4]"),
            "{message}"
        );
        assert_eq!(
            files_in(dir.path()),
            ["fleet.key", "fleet.pub", "schema.json"]
        );
        std::fs::write(&json, r#"{"features": [], "labels": "#).unwrap();
        let again = dir.path().join("again");
        std::fs::create_dir(&again).unwrap();
        let message = stderr(&pack_iris(&again, &json));
        assert!(
            message.contains("is not a feature schema in JSON"),
            "{message}"
        );
    }
}
