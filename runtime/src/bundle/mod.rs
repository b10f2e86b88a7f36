//! Signed model bundles: what a fleet device installs, and how it checks one.
//!
//! A bundle is one file (extension `.perch` by convention) carrying a model, the
//! golden data a device self-tests it with, and a signed manifest that binds them:
//!
//! ```no_run
//! use perch_runtime::bundle::{read_verifying_key, Bundle, Limits};
//! use perch_runtime::engine::LoadOptions;
//!
//! # fn main() -> Result<(), perch_runtime::bundle::BundleError> {
//! let trusted = [read_verifying_key("fleet.pub")?];
//! let bundle = Bundle::read_file("kws-1.2.0.perch", &Limits::default())?; // structure, hashes
//! let verified = bundle.verify(&trusted)?; // signature
//! let model = verified.load_model(&LoadOptions::new())?;
//! verified.self_test(&model)?; // golden outputs, before serving
//! println!("{} {} (sequence {})", verified.manifest().name, verified.manifest().version,
//!          verified.manifest().sequence);
//! # Ok(()) }
//! ```
//!
//! # Format (version 1)
//!
//! The file is an uncompressed POSIX ustar archive (model files are compressed
//! already, and an uncompressed archive can be checked without inflating anything).
//! It is deterministic: the same contents and key give the same bytes.
//!
//! - **Entries**, in this order: `manifest.json`, `manifest.sig`, then every other file
//!   sorted by path (byte order). A reader needs the manifest first to detect a bundle
//!   and to know what to expect; it does not depend on the order otherwise.
//! - **Headers**: regular files only (type `0`), `ustar\0` magic and version `00`,
//!   mode 0644, mtime 0, uid and gid 0, empty owner names, paths of at most 100 bytes
//!   in the name field (no prefix, pax or GNU long-name headers), octal sizes, valid
//!   checksums. The archive ends with two zero blocks; only zero padding may follow.
//! - **Paths**: relative, `/`-separated, no empty, `.` or `..` components, no
//!   backslashes, colons or control characters; each at most once.
//! - **`manifest.json`**: UTF-8 JSON, the [`Manifest`] schema, pretty-printed with
//!   fields in the order below (unknown fields are refused):
//!
//!   ```json
//!   {
//!     "format": 1,
//!     "name": "kws",                       // [A-Za-z0-9._-]{1,32}, not starting with . or -
//!     "version": "1.2.0",                  // semantic version
//!     "sequence": 42,                      // u64; a device installs only increasing sequences
//!     "created": "2025-11-26T05:10:00Z",   // RFC 3339 UTC, informational
//!     "key_id": "21fe31dfa154a261",        // first 8 bytes of sha256(public key), hex
//!     "model": {"path": "model.onnx", "format": "onnx", "sha256": "<64 hex>", "bytes": 105824},
//!     "parts": [{"path": "golden/input_0.npy", "sha256": "<64 hex>", "bytes": 2088}, ...],
//!     "signature": {"inputs": [{"name": "mfcc", "dtype": "f32", "shape": [1, 1, 49, 10]}],
//!                   "outputs": [{"name": "logits", "dtype": "f32", "shape": [1, 12]}]},
//!     "golden": {"inputs": ["golden/input_0.npy"], "outputs": ["golden/output_0.npy"],
//!                "tolerance": 0.0001},
//!     "slo": {"p99_ms": 10.0, "max_error_rate": 0.01, "min_throughput": 50.0},
//!     "schema": {"features": [{"name": "age", "type": "numeric", "mean": 41.5, "std": 12.25}],
//!                "labels": ["no", "yes"]}                // optional
//!   }
//!   ```
//!
//!   `model.format` is `onnx` (path `model.onnx`) or `nnef` (`model.nnef.tgz`, or
//!   `model.nnef.tar` when uncompressed). `parts` lists every entry other than the
//!   manifest, its signature and the model, sorted by path; golden files are
//!   `golden/input_N.npy` and `golden/output_N.npy`, one per model input and output,
//!   `.npy` arrays of f32, f64, i64, i32, i8 or u8. In `signature`, a symbolic
//!   dimension is its name (`["N", 64]`). Every `slo` field is optional; `p99_ms` is
//!   milliseconds, `max_error_rate` a fraction in [0, 1], `min_throughput` inferences
//!   per second. `schema` is optional and written only when the model has one: the named
//!   features `/predict` takes, their preprocessing and the class labels
//!   ([`FeatureSchema`]; checked against `signature`).
//! - **`manifest.sig`**: the 64-byte raw ed25519 signature (RFC 8032, verified strictly)
//!   over the exact bytes of `manifest.json`.
//!
//! # What is checked, and when
//!
//! [`Bundle::parse`] checks everything that needs no key: the [`Limits`] (the total
//! size before anything is copied), the archive's structure, each path, the
//! manifest's schema and rules (its JSON, bounded by `max_manifest_bytes`, is the one
//! thing read before the signature, since it names the signer and the parts), and that
//! every listed part is present with its length and SHA-256 and that nothing unlisted
//! is. No part is parsed. [`Bundle::verify`] then checks the signature against trusted
//! keys, which makes the whole bundle authentic, and only then decodes the golden
//! `.npy` files, with the strict reader of [`crate::engine::internal::npy`] (a header that gives
//! a key twice or a shape its data does not fill is refused). All sizes in headers and
//! `.npy` files are checked against the bytes present, so even a bundle signed by a
//! trusted key cannot make the reader allocate more than a small multiple of its own
//! size. Loading the model and the golden self-test come last: they run untrusted
//! model code paths in the engine, so a device does them only on a [`VerifiedBundle`]. The sequence number is reported, not judged: only the device
//! knows the last one it installed.

mod archive;
mod error;
mod keys;
mod limits;
mod manifest;
mod schema;
mod signature;

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::engine::{Array, Golden, LoadOptions, Model, SelfTestReport, Tolerance};

pub use error::BundleError;
pub use keys::{
    key_id, parse_signing_key, parse_verifying_key, read_signing_key, read_verifying_key,
    sign_text, signing_key_file, verify_text, verifying_key_file, TextSignatureError,
};
pub use limits::Limits;
pub use manifest::{
    rfc3339, GoldenFiles, Manifest, ModelKind, ModelPart, Part, ShapeDim, Slo, TensorSignature,
    TensorSpec, FORMAT, MANIFEST_PATH, SIGNATURE_PATH,
};
pub use schema::{
    probability_output, Feature, FeatureSchema, MAX_CATEGORIES, MAX_FEATURES, MAX_LABELS,
    MAX_NAME_BYTES, MAX_WIDTH,
};

/// The file extension of bundles, without the dot.
pub const EXTENSION: &str = "perch";

/// Whether `head` (the first bytes of a file, at least 512) starts like a bundle: a
/// ustar header for `manifest.json`. A cheap probe to tell bundles from models, not
/// validation.
pub fn is_bundle(head: &[u8]) -> bool {
    archive::header_names(head, MANIFEST_PATH)
}

/// A bundle whose structure, manifest and part hashes have been checked, but whose
/// signature has not: nothing in it is trusted yet. [`Bundle::verify`] makes it a
/// [`VerifiedBundle`].
///
/// It owns the bundle's bytes (one allocation) and hands out views into them, so the
/// bytes a device installs are exactly the bytes it checked ([`Bundle::as_bytes`]).
#[derive(Debug, Clone)]
pub struct Bundle {
    bytes: Vec<u8>,
    sha256: [u8; 32],
    manifest: Manifest,
    manifest_range: Range<usize>,
    signature: Signature,
    model_range: Range<usize>,
    parts: Vec<(String, Range<usize>)>,
}

impl Bundle {
    /// Parses and checks a bundle held in memory (copying it once; see [`Bundle::from_vec`]).
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Bundle, BundleError> {
        check_size(bytes.len() as u64, limits)?;
        Self::from_vec(bytes.to_vec(), limits)
    }

    /// Parses and checks a bundle, taking ownership of its bytes.
    ///
    /// Checks, in order: size limit, archive structure and paths, `manifest.json` and
    /// `manifest.sig` present, the manifest (format, version, schema, rules), each
    /// listed part present with the listed length and SHA-256, and no unlisted entry.
    /// The first failure is returned. No part is parsed: the golden files are decoded
    /// by [`Bundle::verify`], after the signature.
    pub fn from_vec(bytes: Vec<u8>, limits: &Limits) -> Result<Bundle, BundleError> {
        check_size(bytes.len() as u64, limits)?;
        let base = bytes.as_ptr() as usize;
        let mut entries: Vec<(String, Range<usize>)> = Vec::new();
        for entry in archive::read_entries(&bytes, limits)? {
            if entries.iter().any(|(p, _)| p == entry.path) {
                return Err(BundleError::DuplicateEntry {
                    path: entry.path.to_string(),
                });
            }
            let start = entry.data.as_ptr() as usize - base;
            entries.push((entry.path.to_string(), start..start + entry.data.len()));
        }
        let mut take = |path: &str| {
            let i = entries.iter().position(|(p, _)| p == path)?;
            Some(entries.remove(i).1)
        };
        let manifest_range = take(MANIFEST_PATH).ok_or(BundleError::MissingManifest)?;
        let manifest_len = manifest_range.len() as u64;
        if manifest_len > limits.max_manifest_bytes {
            return Err(BundleError::Oversize {
                what: "manifest.json's size in bytes",
                limit: limits.max_manifest_bytes,
                actual: manifest_len,
            });
        }
        let signature_range = take(SIGNATURE_PATH).ok_or(BundleError::MissingSignature)?;
        let manifest = Manifest::from_json(&bytes[manifest_range.clone()])?;
        let signature: [u8; 64] = bytes[signature_range.clone()].try_into().map_err(|_| {
            BundleError::MalformedSignature {
                len: signature_range.len(),
            }
        })?;

        let mut check = |path: &str, sha256: &str, len: u64| -> Result<Range<usize>, BundleError> {
            let range = take(path).ok_or_else(|| BundleError::MissingPart { path: path.into() })?;
            if range.len() as u64 != len {
                return Err(BundleError::SizeMismatch {
                    path: path.into(),
                    expected: len,
                    actual: range.len() as u64,
                });
            }
            let actual = hex::encode(Sha256::digest(&bytes[range.clone()]));
            if actual != sha256 {
                return Err(BundleError::HashMismatch {
                    path: path.into(),
                    expected: sha256.into(),
                    actual,
                });
            }
            Ok(range)
        };
        let model = &manifest.model;
        let model_range = check(&model.path, &model.sha256, model.bytes)?;
        let mut parts = Vec::with_capacity(manifest.parts.len());
        for part in &manifest.parts {
            parts.push((
                part.path.clone(),
                check(&part.path, &part.sha256, part.bytes)?,
            ));
        }
        if let Some((path, _)) = entries.first() {
            return Err(BundleError::UnlistedEntry { path: path.clone() });
        }

        let sha256 = Sha256::digest(&bytes).into();
        Ok(Bundle {
            sha256,
            manifest,
            manifest_range,
            signature: Signature::from_bytes(&signature),
            model_range,
            parts,
            bytes,
        })
    }

    /// Reads and parses a bundle file, refusing one above `limits` before reading it
    /// (and never reading more than the limit from a file that grows meanwhile).
    pub fn read_file(path: impl AsRef<Path>, limits: &Limits) -> Result<Bundle, BundleError> {
        let path = path.as_ref();
        let io = |error| BundleError::Io {
            path: path.into(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        check_size(len, limits)?;
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(limits.max_bundle_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_vec(bytes, limits)
    }

    /// Checks the signature over `manifest.json` against the trusted keys and returns the
    /// id of the key that verified it.
    ///
    /// The manifest names its signer by key id; a manifest signed by a key that is not
    /// trusted is [`BundleError::UnknownKey`], a signature that does not verify under the
    /// trusted key with that id is [`BundleError::SignatureInvalid`].
    pub fn check_signature(&self, trusted: &[VerifyingKey]) -> Result<String, BundleError> {
        let key_id = &self.manifest.key_id;
        let key = trusted
            .iter()
            .find(|k| &keys::key_id(k) == key_id)
            .ok_or_else(|| BundleError::UnknownKey {
                key_id: key_id.clone(),
                trusted: trusted.iter().map(keys::key_id).collect(),
            })?;
        key.verify_strict(self.manifest_bytes(), &self.signature)
            .map_err(|_| BundleError::SignatureInvalid {
                key_id: key_id.clone(),
            })?;
        Ok(key_id.clone())
    }

    /// Checks the signature ([`Bundle::check_signature`]) and, when it verifies,
    /// decodes the golden files and returns the bundle as verified.
    ///
    /// # Errors
    ///
    /// The signature is refused, or a golden file does not decode
    /// ([`BundleError::BadGolden`]).
    pub fn verify(self, trusted: &[VerifyingKey]) -> Result<VerifiedBundle, BundleError> {
        let key_id = self.check_signature(trusted)?;
        let golden = self.decode_golden()?;
        Ok(VerifiedBundle {
            bundle: self,
            key_id,
            golden,
        })
    }

    /// Decodes the golden inputs and outputs (their `dir` is `golden`).
    ///
    /// [`Bundle::verify`] does this after the signature; called on a bundle that was not
    /// verified (a host tool running a bundle without keys), it reads unauthenticated
    /// bytes, with the same strict `.npy` reader ([`crate::engine::internal::npy`]).
    ///
    /// # Errors
    ///
    /// [`BundleError::BadGolden`] naming the file.
    pub fn decode_golden(&self) -> Result<Golden, BundleError> {
        let decode = |paths: &[String]| -> Result<Vec<Array>, BundleError> {
            paths
                .iter()
                .map(|path| {
                    let bytes = self.part(path).unwrap_or_default();
                    crate::engine::decode_npy(bytes).map_err(|reason| BundleError::BadGolden {
                        path: path.clone(),
                        reason,
                    })
                })
                .collect()
        };
        Ok(Golden {
            dir: PathBuf::from("golden"),
            inputs: decode(&self.manifest.golden.inputs)?,
            outputs: decode(&self.manifest.golden.outputs)?,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact bytes of `manifest.json` (what the signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.bytes[self.manifest_range.clone()]
    }

    /// The 64 bytes of `manifest.sig`.
    pub fn signature_bytes(&self) -> [u8; 64] {
        self.signature.to_bytes()
    }

    /// The model file's bytes.
    pub fn model_bytes(&self) -> &[u8] {
        &self.bytes[self.model_range.clone()]
    }

    /// The bytes of a listed part, by path.
    pub fn part(&self, path: &str) -> Option<&[u8]> {
        self.parts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, r)| &self.bytes[r.clone()])
    }

    /// The manifest's golden tolerance.
    pub fn tolerance(&self) -> Tolerance {
        Tolerance {
            relative: self.manifest.golden.tolerance as f32,
        }
    }

    /// The whole bundle's bytes, exactly as parsed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the whole bundle.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Loads the model into the engine from the bundle's bytes.
    ///
    /// On an unverified bundle this runs an unauthenticated model file through the
    /// engine; devices load only from a [`VerifiedBundle`] (which derefs to this).
    pub fn load_model(&self, options: &LoadOptions) -> Result<Model, BundleError> {
        let bytes = self.model_bytes();
        match self.manifest.model.format {
            ModelKind::Onnx => Model::from_onnx_bytes(bytes, options),
            ModelKind::Nnef => Model::from_nnef_bytes(bytes, options),
        }
        .map_err(BundleError::Model)
    }
}

/// A bundle whose signature verified under a trusted key: its manifest, and through the
/// hashes every part, are authentic. Derefs to [`Bundle`] for its contents.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    bundle: Bundle,
    key_id: String,
    golden: Golden,
}

impl VerifiedBundle {
    /// The golden inputs and outputs, decoded after the signature verified (their
    /// `dir` is `golden`).
    pub fn golden(&self) -> &Golden {
        &self.golden
    }

    /// Runs the golden inputs through `model` and compares with the golden outputs
    /// under the manifest's tolerance.
    ///
    /// # Errors
    ///
    /// The session cannot be created, or an output is off ([`BundleError::SelfTest`]).
    pub fn self_test(&self, model: &Model) -> Result<SelfTestReport, BundleError> {
        let mut session = model.session().map_err(BundleError::Model)?;
        session
            .self_test(&self.golden, self.tolerance())
            .map_err(BundleError::SelfTest)
    }

    /// The id of the trusted key that verified the signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The bundle, giving up the proof of verification.
    pub fn into_bundle(self) -> Bundle {
        self.bundle
    }
}

impl std::ops::Deref for VerifiedBundle {
    type Target = Bundle;

    fn deref(&self) -> &Bundle {
        &self.bundle
    }
}

/// What goes into a bundle: [`pack`] computes the hashes, writes the manifest and signs it.
#[derive(Debug, Clone)]
pub struct BundleContents {
    /// The model's name ([`Manifest::name`] says which characters are allowed).
    pub name: String,
    /// The model's version.
    pub version: semver::Version,
    /// The release sequence number ([`Manifest::sequence`]).
    pub sequence: u64,
    /// When the bundle is packed, seconds since the Unix epoch (written as RFC 3339).
    pub created_unix: u64,
    /// The model's format.
    pub model_format: ModelKind,
    /// The model file's bytes.
    pub model: Vec<u8>,
    /// The model's inputs and outputs ([`TensorSignature::from_metadata`] of the loaded model).
    pub signature: TensorSignature,
    /// Golden inputs as `.npy` file bytes, in the model's input order.
    pub golden_inputs: Vec<Vec<u8>>,
    /// Golden outputs as `.npy` file bytes, in the model's output order.
    pub golden_outputs: Vec<Vec<u8>>,
    /// The golden relative-error tolerance.
    pub tolerance: f64,
    /// Service-level objectives.
    pub slo: Slo,
    /// The feature schema for `/predict` ([`FeatureSchema`]), if the model has one.
    pub schema: Option<FeatureSchema>,
}

/// Packs `contents` into a bundle signed with `key`, and parses the result back with
/// [`Limits::default`] as a device would (so a bundle that a device with default limits
/// would refuse is refused here), and decodes its golden files.
///
/// The bytes are deterministic: equal contents and key give equal bundles. The model
/// is not loaded: callers check it loads and passes the self-test
/// ([`Bundle::load_model`], [`Bundle::self_test`]) before shipping the bundle.
pub fn pack(contents: &BundleContents, key: &SigningKey) -> Result<Bundle, BundleError> {
    let model_path = match contents.model_format {
        ModelKind::Onnx => "model.onnx",
        ModelKind::Nnef if contents.model.starts_with(&[0x1f, 0x8b]) => "model.nnef.tgz",
        ModelKind::Nnef => "model.nnef.tar",
    };
    let golden_path = |kind: &str, i: usize| format!("golden/{kind}_{i}.npy");
    let mut files: Vec<(String, &[u8])> = Vec::new();
    for (i, bytes) in contents.golden_inputs.iter().enumerate() {
        files.push((golden_path("input", i), bytes));
    }
    for (i, bytes) in contents.golden_outputs.iter().enumerate() {
        files.push((golden_path("output", i), bytes));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let part = |path: &str, bytes: &[u8]| Part {
        path: path.to_string(),
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    };
    let model = part(model_path, &contents.model);
    let manifest = Manifest {
        format: FORMAT,
        name: contents.name.clone(),
        version: contents.version.clone(),
        sequence: contents.sequence,
        created: manifest::rfc3339(contents.created_unix),
        key_id: key_id(&key.verifying_key()),
        model: ModelPart {
            path: model.path,
            format: contents.model_format,
            sha256: model.sha256,
            bytes: model.bytes,
        },
        parts: files.iter().map(|(p, b)| part(p, b)).collect(),
        signature: contents.signature.clone(),
        golden: GoldenFiles {
            inputs: (0..contents.golden_inputs.len())
                .map(|i| golden_path("input", i))
                .collect(),
            outputs: (0..contents.golden_outputs.len())
                .map(|i| golden_path("output", i))
                .collect(),
            tolerance: contents.tolerance,
        },
        slo: contents.slo,
        schema: contents.schema.clone(),
    };
    manifest.validate().map_err(|e| BundleError::Pack {
        reason: e.to_string(),
    })?;
    let json = manifest.to_json();
    let signature = key.sign(&json).to_bytes();
    let mut entries: Vec<(&str, &[u8])> = vec![
        (MANIFEST_PATH, &json),
        (SIGNATURE_PATH, &signature),
        (model_path, &contents.model),
    ];
    entries.extend(files.iter().map(|(p, b)| (p.as_str(), *b)));
    entries[2..].sort_by(|a, b| a.0.cmp(b.0));
    let bytes = archive::write_entries(&entries)?;
    let bundle = Bundle::from_vec(bytes, &Limits::default()).map_err(|e| BundleError::Pack {
        reason: e.to_string(),
    })?;
    bundle.decode_golden().map_err(|e| BundleError::Pack {
        reason: e.to_string(),
    })?;
    Ok(bundle)
}

fn check_size(len: u64, limits: &Limits) -> Result<(), BundleError> {
    if len == 0 {
        return Err(BundleError::Empty);
    }
    if len > limits.max_bundle_bytes {
        return Err(BundleError::Oversize {
            what: "the bundle's size in bytes",
            limit: limits.max_bundle_bytes,
            actual: len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
