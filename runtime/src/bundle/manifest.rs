//! `manifest.json`: what a bundle holds, bound by hash, and what its model promises.

use serde::{Deserialize, Serialize};

pub use crate::slo::Slo;

use super::archive::check_path;
use super::error::BundleError;
use super::schema::FeatureSchema;
pub use super::signature::{ShapeDim, TensorSignature, TensorSpec};

/// The manifest format version this code writes and reads.
pub const FORMAT: u64 = 1;

/// The path of the manifest inside a bundle.
pub const MANIFEST_PATH: &str = "manifest.json";
/// The path of the signature over the manifest inside a bundle.
pub const SIGNATURE_PATH: &str = "manifest.sig";

/// The signed description of a bundle (`manifest.json`).
///
/// Every field is covered by the signature in `manifest.sig`, and every other file in
/// the bundle is bound to it by SHA-256, so verifying the signature and the hashes
/// authenticates the whole bundle. Unknown fields are refused: a new required field
/// means a new [`FORMAT`]. An optional field (`schema`) is left out when empty, so
/// bundles without it stay byte for byte what older runtimes read; a runtime that
/// predates it refuses a bundle that has it, naming the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format version, [`FORMAT`].
    pub format: u64,
    /// The model's name: 1–32 characters (what a device's reports can carry) of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
    pub name: String,
    /// The model's semantic version.
    pub version: semver::Version,
    /// Monotonic release number: a device installs a bundle only if it is higher than
    /// the last one it installed, which stops downgrades and replays.
    pub sequence: u64,
    /// When the bundle was packed, RFC 3339 UTC (`2025-11-26T05:10:00Z`). Informational:
    /// ordering uses [`Manifest::sequence`], never the clock.
    pub created: String,
    /// The id of the key that signed the manifest ([`key_id`](super::key_id)).
    pub key_id: String,
    /// The model file.
    pub model: ModelPart,
    /// Every other file of the bundle except `manifest.json` and `manifest.sig`, sorted by path.
    pub parts: Vec<Part>,
    /// The model's inputs and outputs, as the engine saw them at pack time.
    pub signature: TensorSignature,
    /// The golden self-test a device runs before serving the model.
    pub golden: GoldenFiles,
    /// Service-level objectives a rollout checks the model against.
    #[serde(default)]
    pub slo: Slo,
    /// How named features become the model's input, and the class labels, for
    /// `/predict`: absent for models that take tensors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<FeatureSchema>,
}

/// The model file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPart {
    /// Its path in the bundle (`model.onnx`, `model.nnef.tgz`).
    pub path: String,
    /// How to load it.
    pub format: ModelKind,
    /// SHA-256 of its bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The format of a bundle's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// An ONNX protobuf.
    Onnx,
    /// A tract NNEF archive (tar, optionally gzipped).
    Nnef,
}

/// A file of the bundle other than the model and the manifest's own two files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Its path in the bundle.
    pub path: String,
    /// SHA-256 of its bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The golden files: inputs to run and the outputs they must give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFiles {
    /// `.npy` parts, one per model input, in the model's input order.
    pub inputs: Vec<String>,
    /// `.npy` parts, one per model output, in the model's output order.
    pub outputs: Vec<String>,
    /// The largest accepted relative error, `max |got - want| / max |want|` per output.
    pub tolerance: f64,
}

impl Manifest {
    /// Parses and validates `manifest.json` bytes.
    ///
    /// The format version is read first, so a newer manifest is reported as
    /// [`BundleError::UnsupportedFormat`] rather than as a schema error; an invalid
    /// version string is [`BundleError::InvalidVersion`]; everything else that breaks
    /// the schema or [`Manifest::validate`] is [`BundleError::BadManifest`].
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, BundleError> {
        #[derive(Deserialize)]
        struct Probe {
            format: Option<serde_json::Value>,
            version: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(bad_json)?;
        let format = probe
            .format
            .ok_or_else(|| bad("missing field `format`".into()))?;
        let format = format
            .as_u64()
            .ok_or_else(|| bad(format!("`format` is {format}, not a version number")))?;
        if format != FORMAT {
            return Err(BundleError::UnsupportedFormat {
                found: format,
                supported: FORMAT,
            });
        }
        if let Some(serde_json::Value::String(version)) = &probe.version {
            semver::Version::parse(version).map_err(|e| BundleError::InvalidVersion {
                version: version.clone(),
                reason: e.to_string(),
            })?;
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(bad_json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as `manifest.json` bytes: pretty-printed JSON with fields in
    /// declaration order and a final newline, so equal manifests give equal bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data (strings, integers, finite floats) cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Checks the rules the schema alone does not: the name's characters, hash and key
    /// id formats, safe and distinct paths, golden files that are listed parts and match
    /// the signature's arity, a usable tolerance, sensible SLO values, and a feature
    /// schema that follows its rules and fits the model's signature.
    pub fn validate(&self) -> Result<(), BundleError> {
        // Devices report the name in a wire::ModelId, which holds at most 32 bytes.
        let name_ok = (1..=crate::wire::MAX_MODEL_NAME_LEN).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !self.name.starts_with(['.', '-']);
        if !name_ok {
            return Err(bad(format!(
                "name {:?} must be 1-{} characters of A-Z a-z 0-9 . _ - and not start with . or -",
                self.name,
                crate::wire::MAX_MODEL_NAME_LEN
            )));
        }
        if !is_hex(&self.key_id, 16) {
            return Err(bad(format!(
                "key_id {:?} must be 16 lower-case hex digits",
                self.key_id
            )));
        }
        if self.created.is_empty() || self.created.len() > 64 {
            return Err(bad("created must be a timestamp of 1-64 characters".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let files = std::iter::once((&self.model.path, &self.model.sha256))
            .chain(self.parts.iter().map(|p| (&p.path, &p.sha256)));
        for (path, sha256) in files {
            check_path(path)?;
            if path == MANIFEST_PATH || path == SIGNATURE_PATH {
                return Err(bad(format!("{path:?} cannot be listed as a part")));
            }
            if !seen.insert(path.as_str()) {
                return Err(BundleError::DuplicateEntry { path: path.clone() });
            }
            if !is_hex(sha256, 64) {
                return Err(bad(format!(
                    "the sha256 of {path:?} must be 64 lower-case hex digits"
                )));
            }
        }
        let golden = &self.golden;
        for path in golden.inputs.iter().chain(&golden.outputs) {
            if !self.parts.iter().any(|p| &p.path == path) {
                return Err(bad(format!("golden file {path:?} is not listed in parts")));
            }
        }
        if golden.inputs.len() != self.signature.inputs.len() || golden.inputs.is_empty() {
            return Err(bad(format!(
                "the golden data has {} input(s), the model takes {} (at least one is needed)",
                golden.inputs.len(),
                self.signature.inputs.len()
            )));
        }
        if golden.outputs.len() != self.signature.outputs.len() || golden.outputs.is_empty() {
            return Err(bad(format!(
                "the golden data has {} output(s), the model returns {} (at least one is needed)",
                golden.outputs.len(),
                self.signature.outputs.len()
            )));
        }
        if !(golden.tolerance.is_finite() && golden.tolerance >= 0.0) {
            return Err(bad(format!(
                "golden tolerance {} must be a finite number >= 0",
                golden.tolerance
            )));
        }
        let positive = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                Err(bad(format!("slo {name} {v} must be a finite number > 0")))
            }
            _ => Ok(()),
        };
        positive("p99_ms", self.slo.p99_ms)?;
        positive("min_throughput", self.slo.min_throughput)?;
        if let Some(rate) = self.slo.max_error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(bad(format!(
                    "slo max_error_rate {rate} must be between 0 and 1"
                )));
            }
        }
        if let Some(schema) = &self.schema {
            schema.validate()?;
            schema.check_signature(&self.signature)?;
        }
        Ok(())
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn bad(reason: String) -> BundleError {
    BundleError::BadManifest { reason }
}

fn bad_json(e: serde_json::Error) -> BundleError {
    bad(e.to_string())
}

/// `seconds` since the Unix epoch as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rem = seconds % 86_400;
    // Howard Hinnant's civil-from-days, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400` (a leap day) and `date -u -d @1764133800`.
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_133_800), "2025-11-26T05:10:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
