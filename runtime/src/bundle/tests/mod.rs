//! Bundles built from the reference models with real keys and signatures, then broken
//! in every way the parser and verifier must catch.

use std::path::{Path, PathBuf};

use super::*;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn spec(name: &str, dtype: &str, shape: &[ShapeDim]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
    }
}

/// R2 (kws-dscnn) with its float golden data; its signature as `perch inspect` shows it.
fn r2() -> BundleContents {
    let dir = models().join("kws-dscnn");
    BundleContents {
        name: "kws".into(),
        version: semver::Version::new(1, 2, 0),
        sequence: 7,
        created_unix: 1_764_133_800,
        model_format: ModelKind::Onnx,
        model: read(dir.join("model.onnx")),
        signature: TensorSignature {
            inputs: vec![spec("mfcc", "f32", &[1, 1, 49, 10].map(ShapeDim::Fixed))],
            outputs: vec![spec(
                "logits",
                "f32",
                &[ShapeDim::Fixed(1), ShapeDim::Fixed(12)],
            )],
        },
        golden_inputs: vec![read(dir.join("golden/input_0.npy"))],
        golden_outputs: vec![read(dir.join("golden/output_0.npy"))],
        tolerance: 1e-4,
        slo: Slo {
            p99_ms: Some(10.0),
            max_error_rate: Some(0.01),
            min_throughput: None,
        },
        schema: None,
    }
}

fn r2_bytes() -> Vec<u8> {
    pack(&r2(), &key(1)).unwrap().as_bytes().to_vec()
}

fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
    Bundle::parse(bytes, &Limits::default())
}

/// The archive's entries as owned (path, data) pairs.
fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    archive::read_entries(bytes, &Limits::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string(), e.data.to_vec()))
        .collect()
}

/// Rewrites the archive after `edit` changed its entries (paths must stay safe).
fn rebuild(bytes: &[u8], edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut entries = entries(bytes);
    edit(&mut entries);
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    archive::write_entries(&refs).unwrap()
}

/// A ustar entry with any name bytes and type flag, which the tar crate would refuse to write.
fn raw_entry(name: &[u8], kind: u8, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.as_old_mut().linkflag = [kind];
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The bundle with `entry` appended before the end-of-archive marker.
fn with_entry(bytes: &[u8], entry: &[u8]) -> Vec<u8> {
    let end = bytes.len() - 1024;
    assert!(bytes[end..].iter().all(|b| *b == 0));
    [&bytes[..end], entry, &bytes[end..]].concat()
}

fn edit_manifest(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    rebuild(bytes, |entries| {
        let manifest = &mut entries[0].1;
        let mut json: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        edit(&mut json);
        *manifest = serde_json::to_vec_pretty(&json).unwrap();
    })
}

mod packing {
    use super::*;

    #[test]
    fn a_packed_bundle_parses_and_verifies_with_its_key() {
        let contents = r2();
        let bundle = parse(&r2_bytes()).unwrap();
        let verified = bundle.verify(&[key(1).verifying_key()]).unwrap();
        assert_eq!(verified.key_id(), key_id(&key(1).verifying_key()));
        let manifest = verified.manifest();
        assert_eq!(
            (
                manifest.name.as_str(),
                manifest.version.to_string(),
                manifest.sequence
            ),
            ("kws", "1.2.0".to_string(), 7)
        );
        assert_eq!(manifest.model.path, "model.onnx");
        assert_eq!(verified.model_bytes(), contents.model.as_slice());
        assert_eq!(
            verified.part("golden/input_0.npy"),
            Some(contents.golden_inputs[0].as_slice())
        );
        assert_eq!(verified.golden().inputs[0].shape(), &[1, 1, 49, 10]);
        assert_eq!(verified.golden().outputs[0].shape(), &[1, 12]);
        assert_eq!(
            verified.sha256(),
            <[u8; 32]>::from(Sha256::digest(verified.as_bytes()))
        );
    }

    #[test]
    fn the_archive_holds_the_manifest_first_then_sorted_parts() {
        let paths: Vec<String> = entries(&r2_bytes()).into_iter().map(|e| e.0).collect();
        assert_eq!(
            paths,
            [
                "manifest.json",
                "manifest.sig",
                "golden/input_0.npy",
                "golden/output_0.npy",
                "model.onnx"
            ]
        );
        assert!(is_bundle(&r2_bytes()));
        assert!(!is_bundle(&read(models().join("kws-dscnn/model.onnx"))));
    }

    #[test]
    fn packing_the_same_contents_twice_gives_identical_bytes() {
        assert_eq!(r2_bytes(), r2_bytes());
    }

    #[test]
    fn the_manifest_json_for_fixed_inputs_is_stable() {
        // Hashes from `sha256sum`; the signature from Python's `cryptography` package
        // signing this exact text with the RFC 8032 test 1 key.
        const EXPECTED: &str = include_str!("../testdata/manifest.json");
        const SIGNATURE: &str = "68565fa495912f4a1ef0601e8de9857a8b2c5164bc37e5f772cdae77a959f7c494946457b9b86b26e631bd88a10ca3a22b2673df132651ccff5c2d71e4568702";
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let contents = BundleContents {
            name: "kws".into(),
            version: semver::Version::new(1, 2, 0),
            sequence: 42,
            created_unix: 1_764_133_800,
            model_format: ModelKind::Onnx,
            model: b"abc".to_vec(),
            signature: TensorSignature {
                inputs: vec![spec("x", "f32", &[ShapeDim::Symbolic("N".into())])],
                outputs: vec![spec("y", "f32", &[ShapeDim::Fixed(1)])],
            },
            golden_inputs: vec![npy_f32_scalar_vector(1.0)],
            golden_outputs: vec![npy_f32_scalar_vector(2.0)],
            tolerance: 1e-4,
            slo: Slo {
                p99_ms: Some(10.0),
                max_error_rate: Some(0.01),
                min_throughput: None,
            },
            schema: None,
        };
        let bundle = pack(&contents, &SigningKey::from_bytes(&seed)).unwrap();
        assert_eq!(
            std::str::from_utf8(bundle.manifest_bytes()).unwrap(),
            EXPECTED
        );
        assert_eq!(hex::encode(bundle.signature_bytes()), SIGNATURE);
    }

    /// `numpy.save` of `numpy.array([value], dtype=numpy.float32)`, byte for byte.
    fn npy_f32_scalar_vector(value: f32) -> Vec<u8> {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let header = format!("{header:<117}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        out
    }

    #[test]
    fn contents_that_break_the_manifest_rules_are_refused_at_pack_time() {
        let mut bad_name = r2();
        bad_name.name = "../kws".into();
        let mut no_golden = r2();
        no_golden.golden_outputs.clear();
        let mut bad_slo = r2();
        bad_slo.slo.max_error_rate = Some(2.0);
        let mut bad_npy = r2();
        bad_npy.golden_inputs[0] = b"not an npy file".to_vec();
        for (contents, says) in [
            (bad_name, "name"),
            (no_golden, "output"),
            (bad_slo, "max_error_rate"),
            (bad_npy, "golden/input_0.npy"),
        ] {
            let err = pack(&contents, &key(1)).unwrap_err();
            assert!(matches!(err, BundleError::Pack { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    #[cfg(feature = "onnx")]
    fn an_nnef_model_is_packed_as_model_nnef_tar_and_loads() {
        let nnef = crate::testing::nnef_tar(&models().join("kws-dscnn/model.onnx"));
        let mut contents = r2();
        contents.model_format = ModelKind::Nnef;
        contents.model = nnef;
        let bundle = pack(&contents, &key(1))
            .unwrap()
            .verify(&[key(1).verifying_key()])
            .unwrap();
        assert_eq!(bundle.manifest().model.path, "model.nnef.tar");
        let model = bundle.load_model(&LoadOptions::new()).unwrap();
        bundle.self_test(&model).unwrap();
    }
}

#[cfg(feature = "onnx")]
mod self_test {
    use super::*;

    #[test]
    fn a_verified_bundle_loads_its_model_and_passes_its_golden_self_test() {
        let verified = parse(&r2_bytes())
            .unwrap()
            .verify(&[key(1).verifying_key()])
            .unwrap();
        let model = verified.load_model(&LoadOptions::new()).unwrap();
        assert_eq!(
            TensorSignature::from_metadata(model.metadata()),
            verified.manifest().signature
        );
        let report = verified.self_test(&model).unwrap();
        assert!(report.outputs[0].relative_error <= 1e-4, "{report:?}");
    }

    #[test]
    fn golden_outputs_of_another_model_fail_the_self_test() {
        // The float anomaly autoencoder against its int8 twin's outputs: > 1e-4 apart.
        let dir = models().join("anomaly-ae");
        let contents = BundleContents {
            name: "anomaly".into(),
            model: read(dir.join("model.onnx")),
            signature: TensorSignature {
                inputs: vec![spec("x", "f32", &[1, 640].map(ShapeDim::Fixed))],
                outputs: vec![spec("y", "f32", &[1, 640].map(ShapeDim::Fixed))],
            },
            golden_inputs: vec![read(dir.join("golden/input_0.npy"))],
            golden_outputs: vec![read(dir.join("golden/output_0.w8.npy"))],
            ..r2()
        };
        let bundle = pack(&contents, &key(1))
            .unwrap()
            .verify(&[key(1).verifying_key()])
            .unwrap();
        let model = bundle.load_model(&LoadOptions::new()).unwrap();
        let err = bundle.self_test(&model).unwrap_err();
        assert!(matches!(err, BundleError::SelfTest(_)), "{err}");
        assert!(err.to_string().contains("relative error"), "{err}");
    }

    #[test]
    fn a_model_the_engine_cannot_read_is_a_model_error() {
        let mut contents = r2();
        contents.model = b"not a protobuf at all".to_vec();
        let bundle = pack(&contents, &key(1)).unwrap();
        let err = bundle.load_model(&LoadOptions::new()).unwrap_err();
        assert!(matches!(err, BundleError::Model(_)), "{err}");
    }
}

mod tampering {
    use super::*;

    #[test]
    fn a_flipped_model_byte_is_a_hash_mismatch_naming_model_onnx() {
        let mut bytes = r2_bytes();
        let model = read(models().join("kws-dscnn/model.onnx"));
        let at = bytes.windows(64).position(|w| w == &model[..64]).unwrap() + model.len() / 2;
        bytes[at] ^= 0x01;
        let err = parse(&bytes).unwrap_err();
        let BundleError::HashMismatch {
            path,
            expected,
            actual,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(path, "model.onnx");
        assert_eq!(expected, &hex::encode(Sha256::digest(&model)));
        assert_ne!(actual, expected);
        assert!(err.to_string().contains(expected.as_str()), "{err}");
    }

    #[test]
    fn an_edited_manifest_fails_the_signature() {
        let bytes = edit_manifest(&r2_bytes(), |m| m["sequence"] = 1_000_000.into());
        let bundle = parse(&bytes).unwrap();
        assert_eq!(bundle.manifest().sequence, 1_000_000);
        let err = bundle.verify(&[key(1).verifying_key()]).unwrap_err();
        assert!(matches!(err, BundleError::SignatureInvalid { .. }), "{err}");
    }

    #[test]
    fn a_flipped_signature_byte_fails_the_signature() {
        let bytes = rebuild(&r2_bytes(), |e| e[1].1[10] ^= 0x80);
        let err = parse(&bytes)
            .unwrap()
            .verify(&[key(1).verifying_key()])
            .unwrap_err();
        assert!(matches!(err, BundleError::SignatureInvalid { .. }), "{err}");
    }

    #[test]
    fn a_signature_of_the_wrong_length_is_malformed() {
        let bytes = rebuild(&r2_bytes(), |e| e[1].1.truncate(63));
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, BundleError::MalformedSignature { len: 63 }),
            "{err}"
        );
    }

    #[test]
    fn a_bundle_signed_by_an_untrusted_key_names_its_key_id() {
        let err = parse(&r2_bytes())
            .unwrap()
            .verify(&[key(2).verifying_key(), key(3).verifying_key()])
            .unwrap_err();
        let BundleError::UnknownKey {
            key_id: id,
            trusted,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(id, &key_id(&key(1).verifying_key()));
        assert_eq!(trusted.len(), 2);
        let none = parse(&r2_bytes()).unwrap().verify(&[]).unwrap_err();
        assert!(none.to_string().contains("trusted: none"), "{none}");
    }

    #[test]
    fn a_manifest_claiming_a_trusted_key_id_but_signed_by_another_key_fails() {
        // Re-sign with key 2 but keep key 1's id: the trusted key 1 must reject it.
        let bytes = rebuild(&r2_bytes(), |e| {
            e[1].1 = key(2).sign(&e[0].1).to_bytes().to_vec();
        });
        let err = parse(&bytes)
            .unwrap()
            .verify(&[key(1).verifying_key(), key(2).verifying_key()])
            .unwrap_err();
        assert!(matches!(err, BundleError::SignatureInvalid { .. }), "{err}");
    }

    #[test]
    fn a_truncated_bundle_is_refused_wherever_it_is_cut() {
        let bytes = r2_bytes();
        for cut in [
            512,
            700,
            1024,
            1536,
            bytes.len() / 2,
            bytes.len() - 1024,
            bytes.len() - 1,
        ] {
            let err = parse(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, BundleError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
        let err = parse(&bytes[..100]).unwrap_err();
        assert!(matches!(err, BundleError::NotATar { .. }), "{err}");
    }

    #[test]
    fn an_extra_file_is_an_unlisted_entry() {
        let bytes = rebuild(&r2_bytes(), |e| e.push(("extra.bin".into(), b"x".to_vec())));
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, BundleError::UnlistedEntry { path } if path == "extra.bin"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_part_is_named() {
        let bytes = rebuild(&r2_bytes(), |e| {
            e.retain(|(p, _)| p != "golden/output_0.npy")
        });
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, BundleError::MissingPart { path } if path == "golden/output_0.npy"),
            "{err}"
        );
    }

    #[test]
    fn a_part_of_the_wrong_size_is_a_size_mismatch() {
        let bytes = rebuild(&r2_bytes(), |e| e[2].1.push(0));
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, BundleError::SizeMismatch { path, expected: 2088, actual: 2089 } if path == "golden/input_0.npy"),
            "{err}"
        );
    }

    #[test]
    fn path_traversal_and_absolute_entries_are_refused() {
        for name in [&b"../x"[..], b"/etc/x", b"golden/../../x"] {
            let bytes = with_entry(&r2_bytes(), &raw_entry(name, b'0', b"x"));
            let err = parse(&bytes).unwrap_err();
            assert!(matches!(err, BundleError::UnsafePath { .. }), "{err}");
        }
    }

    #[test]
    fn links_and_folders_are_refused() {
        for (kind, says) in [
            (b'2', "symbolic link"),
            (b'1', "hard link"),
            (b'5', "folder"),
        ] {
            let bytes = with_entry(&r2_bytes(), &raw_entry(b"link", kind, b""));
            let err = parse(&bytes).unwrap_err();
            assert!(matches!(err, BundleError::UnsupportedEntry { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn a_duplicate_entry_is_refused() {
        let bytes = with_entry(&r2_bytes(), &raw_entry(b"model.onnx", b'0', b"evil"));
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, BundleError::DuplicateEntry { path } if path == "model.onnx"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_header_fails_its_checksum() {
        let mut bytes = r2_bytes();
        let manifest_len = entries(&bytes)[0].1.len();
        let sig_header = 512 + manifest_len.div_ceil(512) * 512;
        assert_eq!(&bytes[sig_header..sig_header + 12], b"manifest.sig");
        bytes[sig_header + 3] ^= 0x01;
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, BundleError::NotATar { offset, .. } if offset == sig_header as u64),
            "{err}"
        );
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}

mod limits {
    use super::*;

    #[test]
    fn a_bundle_above_the_size_limit_is_refused_before_parsing() {
        let bytes = r2_bytes();
        let limits = Limits::new().max_bundle_bytes(bytes.len() as u64 - 1);
        let err = Bundle::parse(&bytes, &limits).unwrap_err();
        assert!(
            matches!(err, BundleError::Oversize { actual, .. } if actual == bytes.len() as u64),
            "{err}"
        );
    }

    #[test]
    fn too_many_entries_and_a_huge_manifest_are_refused() {
        let bytes = r2_bytes();
        let err = Bundle::parse(&bytes, &Limits::new().max_entries(4)).unwrap_err();
        assert!(
            matches!(err, BundleError::Oversize { limit: 4, .. }),
            "{err}"
        );
        let err = Bundle::parse(&bytes, &Limits::new().max_manifest_bytes(100)).unwrap_err();
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }

    #[test]
    fn a_size_header_larger_than_the_bundle_is_truncation_not_an_allocation() {
        let mut entry = raw_entry(b"big", b'0', b"");
        let mut header = tar::Header::from_byte_slice(&entry[..512]).clone();
        header.set_size(1 << 32); // 4 GiB, still an octal size field
        header.set_cksum();
        entry[..512].copy_from_slice(header.as_bytes());
        let err = parse(&with_entry(&r2_bytes(), &entry)).unwrap_err();
        assert!(matches!(err, BundleError::Truncated { .. }), "{err}");
        // Sizes past 8 GiB need GNU base-256 encoding, which bundles never use.
        header.set_size(1 << 40);
        header.set_cksum();
        entry[..512].copy_from_slice(header.as_bytes());
        let err = parse(&with_entry(&r2_bytes(), &entry)).unwrap_err();
        assert!(err.to_string().contains("size field"), "{err}");
    }

    #[test]
    fn a_golden_file_declaring_a_huge_shape_is_refused_without_allocating_it() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }";
        let header = format!("{header:<117}\n");
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&[0; 4]);
        let err = crate::engine::decode_npy(&npy).unwrap_err();
        assert!(err.contains("1000000000000 elements"), "{err}");
    }

    #[test]
    fn a_file_can_be_read_within_limits() {
        let dir = std::env::temp_dir().join(format!("perch-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kws.perch");
        std::fs::write(&path, r2_bytes()).unwrap();
        Bundle::read_file(&path, &Limits::default()).unwrap();
        let err = Bundle::read_file(&path, &Limits::new().max_bundle_bytes(1000)).unwrap_err();
        assert!(matches!(err, BundleError::Oversize { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

mod not_a_bundle {
    use super::*;

    #[test]
    fn empty_input_is_refused_as_empty() {
        assert!(matches!(parse(&[]), Err(BundleError::Empty)));
    }

    #[test]
    fn garbage_bytes_are_not_a_tar() {
        // A fixed pseudo-random stream (xorshift), not all zeros.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let err = parse(&garbage).unwrap_err();
        assert!(
            matches!(err, BundleError::NotATar { offset: 0, .. }),
            "{err}"
        );
        let model = read(models().join("kws-dscnn/model.onnx"));
        assert!(matches!(parse(&model), Err(BundleError::NotATar { .. })));
    }

    #[test]
    fn an_archive_without_a_manifest_or_signature_says_which() {
        let bytes = rebuild(&r2_bytes(), |e| e.retain(|(p, _)| p != "manifest.json"));
        assert!(matches!(parse(&bytes), Err(BundleError::MissingManifest)));
        let bytes = rebuild(&r2_bytes(), |e| e.retain(|(p, _)| p != "manifest.sig"));
        assert!(matches!(parse(&bytes), Err(BundleError::MissingSignature)));
    }
}

mod manifest_rules {
    use super::*;

    #[test]
    fn a_version_that_is_not_semver_is_refused() {
        let bytes = edit_manifest(&r2_bytes(), |m| m["version"] = "1.2".into());
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(&err, BundleError::InvalidVersion { version, .. } if version == "1.2"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_format_is_unsupported_not_malformed() {
        let bytes = edit_manifest(&r2_bytes(), |m| {
            m["format"] = 2.into();
            m["new_field"] = true.into();
        });
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::UnsupportedFormat {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_broken_json_are_bad_manifests() {
        let bytes = edit_manifest(&r2_bytes(), |m| m["surprise"] = 1.into());
        let err = parse(&bytes).unwrap_err();
        assert!(matches!(err, BundleError::BadManifest { .. }), "{err}");
        assert!(err.to_string().contains("surprise"), "{err}");
        let bytes = rebuild(&r2_bytes(), |e| e[0].1.truncate(40));
        let err = parse(&bytes).unwrap_err();
        assert!(matches!(err, BundleError::BadManifest { .. }), "{err}");
    }

    #[test]
    fn a_manifest_part_path_that_escapes_is_refused() {
        let bytes = edit_manifest(&r2_bytes(), |m| m["model"]["path"] = "../model.onnx".into());
        let err = parse(&bytes).unwrap_err();
        assert!(matches!(err, BundleError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn golden_files_must_be_listed_parts() {
        let bytes = edit_manifest(&r2_bytes(), |m| {
            m["golden"]["inputs"][0] = "golden/elsewhere.npy".into();
        });
        let err = parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("golden/elsewhere.npy"), "{err}");
    }
}

/// Issue 15: nothing in a bundle is decoded before its signature is checked.
mod verify_before_decode {
    use super::*;

    /// R2's bundle with `golden/input_0.npy` replaced by `npy`, its manifest updated and
    /// signed by `signer` (as a forger with that key would; `pack` refuses such files).
    fn signed_with_golden_input(npy: &[u8], signer: &SigningKey) -> Vec<u8> {
        rebuild(&r2_bytes(), |entries| {
            let mut manifest = Manifest::from_json(&entries[0].1).unwrap();
            for part in &mut manifest.parts {
                if part.path == "golden/input_0.npy" {
                    part.sha256 = hex::encode(Sha256::digest(npy));
                    part.bytes = npy.len() as u64;
                }
            }
            manifest.key_id = key_id(&signer.verifying_key());
            let json = manifest.to_json();
            entries[1].1 = signer.sign(&json).to_bytes().to_vec();
            entries[0].1 = json;
            for (path, data) in entries.iter_mut() {
                if path == "golden/input_0.npy" {
                    *data = npy.to_vec();
                }
            }
        })
    }

    /// 4 bytes of data under a header whose second `shape` asks for a terabyte.
    fn hostile_npy() -> Vec<u8> {
        let header =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (1000000000000,), }";
        let header = format!("{header:<117}\n");
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&[0; 4]);
        npy
    }

    #[test]
    fn a_hostile_golden_file_is_not_decoded_before_the_signature_is_checked() {
        // Signed by a key the device does not trust: refused for the key, unread.
        let bytes = signed_with_golden_input(&hostile_npy(), &key(2));
        let bundle = parse(&bytes).expect("structure and hashes hold");
        let err = bundle.verify(&[key(1).verifying_key()]).unwrap_err();
        assert!(matches!(err, BundleError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn a_golden_file_giving_its_shape_twice_is_refused_even_under_a_trusted_key() {
        let bytes = signed_with_golden_input(&hostile_npy(), &key(1));
        let err = parse(&bytes)
            .unwrap()
            .verify(&[key(1).verifying_key()])
            .unwrap_err();
        assert!(matches!(err, BundleError::BadGolden { .. }), "{err}");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn an_unverified_bundle_decodes_its_golden_files_only_when_asked() {
        let bundle = parse(&r2_bytes()).unwrap();
        let golden = bundle.decode_golden().unwrap();
        assert_eq!(golden.inputs[0].shape(), &[1, 1, 49, 10]);
        let hostile = parse(&signed_with_golden_input(&hostile_npy(), &key(2))).unwrap();
        let err = hostile.decode_golden().unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}

/// The feature schema travels in the signed manifest and is checked with it.
mod feature_schema;
