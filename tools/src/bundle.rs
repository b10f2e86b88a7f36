//! Keys and signed bundles on the host: `perch keygen`, `perch pack`, `perch verify`,
//! and [`load_model`] for commands that take a model file or a bundle.
//!
//! The bundle format and its checks live in [`perch_runtime::bundle`], which the device
//! agent uses too; this module adds files, key generation and reports.
//!
//! ```no_run
//! use std::path::Path;
//! use perch_tools::bundle::{keygen, pack, verify, PackRequest, VerifyRequest};
//!
//! keygen(Path::new("fleet.key"), false)?;
//! pack(&PackRequest::new("models/kws-dscnn/model.onnx", "kws", "1.2.0", 7, "fleet.key", "kws.perch"))?;
//! let report = verify(&VerifyRequest {
//!     bundle: "kws.perch".into(),
//!     pubkeys: vec!["fleet.pub".into()],
//!     self_test: true,
//! })?;
//! assert!(report.ok);
//! # Ok::<(), perch_tools::ToolError>(())
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use perch_runtime::bundle::{
    self, read_signing_key, read_verifying_key, Bundle, BundleContents, BundleError, Feature,
    FeatureSchema, Limits, Manifest, ModelKind, ShapeDim, SigningKey, Slo, TensorSignature,
    TensorSpec, VerifyingKey,
};
use perch_runtime::engine::{LoadOptions, Model, ModelFormat, SelfTestReport};
use perch_runtime::model_files;
use serde::Serialize;

use crate::ToolError;

/// Loads a model file, or the model of a bundle (with the bundle's manifest).
///
/// A bundle's structure and hashes are checked ([`Bundle::parse`]) but not its
/// signature: this is for local runs and benchmarks; `perch verify` checks signatures.
pub fn load_model(
    path: &Path,
    options: &LoadOptions,
) -> Result<(Model, Option<Manifest>), ToolError> {
    if model_files::is_bundle_file(path) {
        let bundle = Bundle::read_file(path, &Limits::default())?;
        let model = bundle.load_model(options)?;
        return Ok((model, Some(bundle.manifest().clone())));
    }
    Ok((Model::load(path, options)?, None))
}

/// What `perch keygen` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct KeygenReport {
    /// The secret key file (mode 0600).
    pub secret_key: String,
    /// The public key file.
    pub public_key: String,
    /// The key id manifests will name.
    pub key_id: String,
}

impl fmt::Display for KeygenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key id {}", self.key_id)?;
        writeln!(
            f,
            "  secret {} (keep it private: it signs bundles)",
            self.secret_key
        )?;
        write!(
            f,
            "  public {} (give it to devices and to `perch verify --pubkey`)",
            self.public_key
        )
    }
}

/// The public key file that goes with secret key file `secret`: `x.key` → `x.pub`,
/// anything else gets `.pub` appended.
pub fn public_key_path(secret: &Path) -> PathBuf {
    if secret.extension().is_some_and(|e| e == "key") {
        secret.with_extension("pub")
    } else {
        let mut name = secret.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    }
}

/// Generates an ed25519 key from the operating system's random source and writes the
/// secret key to `secret` (mode 0600) and the public key beside it
/// ([`public_key_path`]), each atomically.
///
/// Refuses to replace an existing file unless `force`: a lost signing key cannot sign
/// updates for devices that trust it.
pub fn keygen(secret: &Path, force: bool) -> Result<KeygenReport, ToolError> {
    let public = public_key_path(secret);
    if !force {
        for path in [secret, public.as_path()] {
            if path.exists() {
                return Err(ToolError::Usage(format!(
                    "{} already exists; pass --force to replace it (bundles signed by the old key will no longer verify against the new one)",
                    path.display()
                )));
            }
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| ToolError::Internal(format!("no random source for the key: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    // `SigningKey` wipes itself on drop; wipe the seed copy too (best effort).
    seed.fill(0);
    std::hint::black_box(&seed);
    let secret_tmp = staged(secret, bundle::signing_key_file(&key).as_bytes(), 0o600)?;
    let public_tmp = staged(
        &public,
        bundle::verifying_key_file(&key.verifying_key()).as_bytes(),
        0o644,
    )?;
    commit(secret_tmp, secret, force)?;
    if let Err(e) = commit(public_tmp, &public, force) {
        // Without its public half the new secret is useless; leave no half-made pair.
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    Ok(KeygenReport {
        secret_key: secret.display().to_string(),
        public_key: public.display().to_string(),
        key_id: bundle::key_id(&key.verifying_key()),
    })
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a synced temporary file beside `path`, with permissions `mode`.
fn staged(path: &Path, bytes: &[u8], mode: u32) -> Result<tempfile::NamedTempFile, ToolError> {
    let io = |e: std::io::Error| ToolError::write(path, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".perch-key.")
        .suffix(".tmp")
        .tempfile_in(parent_dir(path))
        .map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    Ok(tmp)
}

/// Renames a staged file into place (refusing to replace one unless `force`) and syncs
/// the folder.
fn commit(tmp: tempfile::NamedTempFile, path: &Path, force: bool) -> Result<(), ToolError> {
    let persisted = if force {
        tmp.persist(path).map(|_| ())
    } else {
        tmp.persist_noclobber(path).map(|_| ())
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            ToolError::Usage(format!(
                "{} already exists; pass --force to replace it",
                path.display()
            ))
        } else {
            ToolError::write(path, e.error)
        }
    })?;
    std::fs::File::open(parent_dir(path))
        .and_then(|d| d.sync_all())
        .map_err(|e| ToolError::write(path, e))
}

/// What `perch pack` packs.
#[derive(Debug, Clone)]
pub struct PackRequest {
    /// The model: ONNX, or an NNEF archive file (`.nnef.tgz`, `.tar`).
    pub model: PathBuf,
    /// The model's name in the manifest.
    pub name: String,
    /// The model's semantic version.
    pub version: String,
    /// The release sequence number (must increase from one release to the next).
    pub sequence: u64,
    /// The secret key file.
    pub key: PathBuf,
    /// Where to write the bundle.
    pub out: PathBuf,
    /// The golden folder (`input_N.npy`, `output_N.npy`); default `golden/` beside the model.
    pub golden: Option<PathBuf>,
    /// Golden output variant (`output_N.<variant>.npy`); default from the file name
    /// (`model.w8.onnx` → `w8`), falling back to `output_N.npy` when guessed and absent.
    pub variant: Option<String>,
    /// The golden relative-error tolerance.
    pub tolerance: f64,
    /// Service-level objectives.
    pub slo: Slo,
    /// The creation time, seconds since the Unix epoch; default `SOURCE_DATE_EPOCH`, else now.
    pub created_unix: Option<u64>,
    /// A feature schema file ([`read_schema`]) to sign into the manifest, for `/predict`.
    pub schema: Option<PathBuf>,
}

impl PackRequest {
    /// A request with the default golden folder, tolerance (1e-4), no SLOs and the current time.
    pub fn new(
        model: impl Into<PathBuf>,
        name: impl Into<String>,
        version: impl Into<String>,
        sequence: u64,
        key: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> PackRequest {
        PackRequest {
            model: model.into(),
            name: name.into(),
            version: version.into(),
            sequence,
            key: key.into(),
            out: out.into(),
            golden: None,
            variant: None,
            tolerance: 1e-4,
            slo: Slo::default(),
            created_unix: None,
            schema: None,
        }
    }
}

/// Reads a feature schema file ([`FeatureSchema`]): TOML when the name ends in `.toml`,
/// JSON otherwise, and checks its rules (whether it fits the model is checked when the
/// manifest is packed).
///
/// # Errors
///
/// The file cannot be read ([`ToolError::Io`]), does not parse ([`ToolError::Decode`]),
/// or breaks a rule ([`BundleError::BadSchema`]).
pub fn read_schema(path: &Path) -> Result<FeatureSchema, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| ToolError::read(path, e))?;
    let schema: FeatureSchema = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| ToolError::decode(path, "a feature schema in TOML", e))?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| ToolError::decode(path, "a feature schema in JSON", e))?
    };
    schema.validate()?;
    Ok(schema)
}

/// One output of a golden self-test.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTestOutput {
    /// The output's name.
    pub name: String,
    /// The largest absolute difference from the golden output.
    pub max_abs_error: f32,
    /// `max |got - want| / max |want|`.
    pub relative_error: f32,
}

/// A passed golden self-test.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTestSummary {
    /// The tolerance applied.
    pub tolerance: f64,
    /// One entry per output.
    pub outputs: Vec<SelfTestOutput>,
    /// Time to load and optimize the model from the bundle, milliseconds (informational).
    pub load_ms: f64,
}

impl SelfTestSummary {
    fn new(report: &SelfTestReport, tolerance: f64, load_ms: f64) -> SelfTestSummary {
        SelfTestSummary {
            tolerance,
            outputs: report
                .outputs
                .iter()
                .map(|o| SelfTestOutput {
                    name: o.name.clone(),
                    max_abs_error: o.max_abs_error,
                    relative_error: o.relative_error,
                })
                .collect(),
            load_ms,
        }
    }
}

/// What `perch pack` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PackReport {
    /// The bundle file.
    pub bundle: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole bundle, hex.
    pub sha256: String,
    /// Where the golden data came from.
    pub golden_dir: String,
    /// The signed manifest.
    pub manifest: Manifest,
    /// The self-test the bundle passed before it was written.
    pub self_test: SelfTestSummary,
}

/// Packs a model, its golden data and SLOs into a signed bundle.
///
/// Refuses (and writes nothing) when the key is unusable, the version is not semver,
/// the model does not load in the engine, there is no golden data, or the model fails
/// its golden self-test (`ToolError::Bundle(BundleError::SelfTest(_))`): a device must be
/// able to self-test every bundle. The bundle is parsed back and verified with the
/// key's public half before it is written atomically.
pub fn pack(request: &PackRequest) -> Result<PackReport, ToolError> {
    let key = read_signing_key(&request.key)?;
    let version = semver::Version::parse(&request.version).map_err(|e| {
        ToolError::Usage(format!(
            "version {:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}",
            request.version
        ))
    })?;
    let path = &request.model;
    if path.is_dir() {
        return Err(ToolError::Usage(format!(
            "{} is a folder; pack a model file (ONNX, or an NNEF archive such as `perch convert` writes)",
            path.display()
        )));
    }
    let model_format = match ModelFormat::detect(path)? {
        ModelFormat::Onnx => ModelKind::Onnx,
        ModelFormat::Nnef => ModelKind::Nnef,
    };
    let model_bytes = std::fs::read(path).map_err(|error| BundleError::Io {
        path: path.clone(),
        error,
    })?;
    let started = Instant::now();
    let options = LoadOptions::new();
    let model = match model_format {
        ModelKind::Onnx => Model::from_onnx_bytes(&model_bytes, &options),
        ModelKind::Nnef => Model::from_nnef_bytes(&model_bytes, &options),
    }?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let golden_dir = match &request.golden {
        Some(dir) => dir.clone(),
        None => parent_dir(path).join("golden"),
    };
    let (golden_inputs, golden_outputs) =
        read_golden(&golden_dir, path, request.variant.as_deref())?;
    let created_unix = match request.created_unix {
        Some(t) => t,
        None => created_now()?,
    };
    let contents = BundleContents {
        name: request.name.clone(),
        version,
        sequence: request.sequence,
        created_unix,
        model_format,
        model: model_bytes,
        signature: TensorSignature::from_metadata(model.metadata()),
        golden_inputs,
        golden_outputs,
        tolerance: request.tolerance,
        slo: request.slo,
        schema: request.schema.as_deref().map(read_schema).transpose()?,
    };
    let bundle = bundle::pack(&contents, &key)?.verify(&[key.verifying_key()])?;
    let report = bundle.self_test(&model)?;
    crate::fsio::write_atomic(&request.out, bundle.as_bytes())
        .map_err(|e| ToolError::write(&request.out, e))?;
    Ok(PackReport {
        bundle: request.out.display().to_string(),
        bytes: bundle.as_bytes().len() as u64,
        sha256: hex::encode(bundle.sha256()),
        golden_dir: golden_dir.display().to_string(),
        manifest: bundle.manifest().clone(),
        self_test: SelfTestSummary::new(&report, request.tolerance, load_ms),
    })
}

/// `SOURCE_DATE_EPOCH` (for reproducible bundles) or the current time.
fn created_now() -> Result<u64, ToolError> {
    if let Ok(text) = std::env::var("SOURCE_DATE_EPOCH") {
        return text.trim().parse().map_err(|_| {
            ToolError::Usage(format!(
                "SOURCE_DATE_EPOCH={text:?} is not a number of seconds"
            ))
        });
    }
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Golden `.npy` files as bytes: the inputs, then the outputs, in model order.
type GoldenBytes = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Reads the golden files' bytes: `input_N.npy` and `output_N[.variant].npy`.
fn read_golden(dir: &Path, model: &Path, variant: Option<&str>) -> Result<GoldenBytes, ToolError> {
    let numbered = |name: &dyn Fn(usize) -> String| -> Result<Vec<Vec<u8>>, ToolError> {
        let mut files = vec![];
        loop {
            let path = dir.join(name(files.len()));
            if !path.is_file() {
                return Ok(files);
            }
            files.push(std::fs::read(&path).map_err(|error| BundleError::Io { path, error })?);
        }
    };
    let inputs = numbered(&|i| format!("input_{i}.npy"))?;
    let guessed = model_files::golden_variant(model);
    let outputs = match (variant, guessed.as_deref()) {
        (Some(v), _) => numbered(&|i| format!("output_{i}.{v}.npy"))?,
        (None, Some(v)) => {
            let files = numbered(&|i| format!("output_{i}.{v}.npy"))?;
            if files.is_empty() {
                numbered(&|i| format!("output_{i}.npy"))?
            } else {
                files
            }
        }
        (None, None) => numbered(&|i| format!("output_{i}.npy"))?,
    };
    if inputs.is_empty() || outputs.is_empty() {
        return Err(ToolError::Data(format!(
            "no golden data in {} (needs input_0.npy and output_0{}.npy): a bundle carries golden data so devices can self-test it; pass --golden DIR",
            dir.display(),
            variant.map(|v| format!(".{v}")).unwrap_or_default()
        )));
    }
    Ok((inputs, outputs))
}

/// What `perch verify` checks.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Trusted public key files (at least one).
    pub pubkeys: Vec<PathBuf>,
    /// Also load the model and run the golden self-test.
    pub self_test: bool,
}

/// Why verification failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// A stable code ([`BundleError::kind`]): `hash_mismatch`, `signature_invalid`, ...
    pub kind: String,
    /// The full message.
    pub message: String,
}

/// The result of `perch verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The bundle file.
    pub bundle: String,
    /// Whether every check passed.
    pub ok: bool,
    /// The first check that failed.
    pub failure: Option<Failure>,
    /// The bundle's size in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole bundle, hex (when it parsed).
    pub sha256: Option<String>,
    /// The id of the trusted key that verified the signature.
    pub key_id: Option<String>,
    /// The public key file with that id.
    pub key_file: Option<String>,
    /// The manifest, when the bundle parsed (signed only if `ok` or the failure came later).
    pub manifest: Option<Manifest>,
    /// The golden self-test, when requested and passed.
    pub self_test: Option<SelfTestSummary>,
}

/// Checks a bundle: structure, hashes, signature against the given public keys, and
/// optionally the model's load and golden self-test.
///
/// A bundle that fails a check gives `Ok` with `ok: false` and the failure; `Err` is
/// kept for problems with the request (an unreadable key file or bundle file).
pub fn verify(request: &VerifyRequest) -> Result<VerifyReport, ToolError> {
    if request.pubkeys.is_empty() {
        return Err(ToolError::Usage(
            "no --pubkey given: verification needs at least one trusted public key".into(),
        ));
    }
    let keys: Vec<(VerifyingKey, &PathBuf)> = request
        .pubkeys
        .iter()
        .map(|p| read_verifying_key(p).map(|k| (k, p)))
        .collect::<Result<_, _>>()?;
    let bytes = std::fs::metadata(&request.bundle)
        .map_err(|error| BundleError::Io {
            path: request.bundle.clone(),
            error,
        })?
        .len();
    let mut report = VerifyReport {
        bundle: request.bundle.display().to_string(),
        ok: false,
        failure: None,
        bytes,
        sha256: None,
        key_id: None,
        key_file: None,
        manifest: None,
        self_test: None,
    };
    let fail = |mut report: VerifyReport, e: BundleError| {
        report.failure = Some(Failure {
            kind: e.kind().to_string(),
            message: e.to_string(),
        });
        Ok(report)
    };
    let parsed = match Bundle::read_file(&request.bundle, &Limits::default()) {
        Ok(b) => b,
        Err(e @ BundleError::Io { .. }) => return Err(e.into()),
        Err(e) => return fail(report, e),
    };
    report.sha256 = Some(hex::encode(parsed.sha256()));
    report.manifest = Some(parsed.manifest().clone());
    let trusted: Vec<VerifyingKey> = keys.iter().map(|(k, _)| *k).collect();
    let verified = match parsed.verify(&trusted) {
        Ok(v) => v,
        Err(e) => return fail(report, e),
    };
    report.key_id = Some(verified.key_id().to_string());
    report.key_file = keys
        .iter()
        .find(|(k, _)| bundle::key_id(k) == verified.key_id())
        .map(|(_, p)| p.display().to_string());
    if request.self_test {
        let started = Instant::now();
        let model = match verified.load_model(&LoadOptions::new()) {
            Ok(m) => m,
            Err(e) => return fail(report, e),
        };
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        match verified.self_test(&model) {
            Ok(r) => {
                report.self_test = Some(SelfTestSummary::new(
                    &r,
                    verified.manifest().golden.tolerance,
                    load_ms,
                ))
            }
            Err(e) => return fail(report, e),
        }
    }
    report.ok = true;
    Ok(report)
}

fn shape_text(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec
        .shape
        .iter()
        .map(|d| match d {
            ShapeDim::Fixed(n) => n.to_string(),
            ShapeDim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("{} {} [{}]", spec.name, spec.dtype, dims.join(","))
}

/// The manifest as indented text lines.
fn write_manifest(f: &mut fmt::Formatter<'_>, m: &Manifest) -> fmt::Result {
    writeln!(
        f,
        "  model    {} ({}, {} bytes, sha256 {})",
        m.model.path,
        match m.model.format {
            ModelKind::Onnx => "onnx",
            ModelKind::Nnef => "nnef",
        },
        m.model.bytes,
        m.model.sha256
    )?;
    for input in &m.signature.inputs {
        writeln!(f, "  input    {}", shape_text(input))?;
    }
    for output in &m.signature.outputs {
        writeln!(f, "  output   {}", shape_text(output))?;
    }
    writeln!(
        f,
        "  golden   {} input(s), {} output(s), tolerance {:.0e}",
        m.golden.inputs.len(),
        m.golden.outputs.len(),
        m.golden.tolerance
    )?;
    let mut slo = vec![];
    if let Some(p99) = m.slo.p99_ms {
        slo.push(format!("p99 <= {p99} ms"));
    }
    if let Some(rate) = m.slo.max_error_rate {
        slo.push(format!("error rate <= {}%", rate * 100.0));
    }
    if let Some(t) = m.slo.min_throughput {
        slo.push(format!("throughput >= {t}/s"));
    }
    if !slo.is_empty() {
        writeln!(f, "  slo      {}", slo.join(", "))?;
    }
    if let Some(schema) = &m.schema {
        write_schema(f, schema)?;
    }
    write!(f, "  created  {}, signed by key {}", m.created, m.key_id)
}

/// The feature schema, one line per feature, then the labels.
pub(crate) fn write_schema(f: &mut fmt::Formatter<'_>, schema: &FeatureSchema) -> fmt::Result {
    writeln!(
        f,
        "  schema   {} feature(s) filling {} column(s), labels {}",
        schema.features.len(),
        schema.width(),
        schema.labels.join(", ")
    )?;
    for feature in &schema.features {
        match feature {
            Feature::Numeric { name, mean, std } => {
                writeln!(f, "    {name:<24} numeric, (x - {mean}) / {std}")?
            }
            Feature::Categorical { name, categories } => {
                writeln!(f, "    {name:<24} one-hot of {}", categories.join(", "))?
            }
        }
    }
    Ok(())
}

fn write_self_test(f: &mut fmt::Formatter<'_>, s: &SelfTestSummary) -> fmt::Result {
    let errors: Vec<String> = s
        .outputs
        .iter()
        .map(|o| format!("{} {:.2e}", o.name, o.relative_error))
        .collect();
    write!(
        f,
        "\n  self-test passed: relative error {} (tolerance {:.0e}; load {:.0} ms)",
        errors.join(", "),
        s.tolerance,
        s.load_ms
    )
}

impl fmt::Display for PackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "packed {} {} (sequence {}) into {}: {} bytes, sha256 {}",
            m.name, m.version, m.sequence, self.bundle, self.bytes, self.sha256
        )?;
        write_manifest(f, m)?;
        write_self_test(f, &self.self_test)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(failure) = &self.failure {
            return write!(
                f,
                "{}: verification FAILED: {}",
                self.bundle, failure.message
            );
        }
        let Some(m) = &self.manifest else {
            return write!(f, "{}: not verified", self.bundle);
        };
        writeln!(
            f,
            "{}: OK: {} {} (sequence {}), signature verified with key {}{}",
            self.bundle,
            m.name,
            m.version,
            m.sequence,
            self.key_id.as_deref().unwrap_or("?"),
            self.key_file
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  bundle   {} bytes, sha256 {}",
            self.bytes,
            self.sha256.as_deref().unwrap_or("?")
        )?;
        write_manifest(f, m)?;
        match &self.self_test {
            Some(s) => write_self_test(f, s),
            None => write!(f, "\n  self-test not run (pass --self-test to load the model and check its golden outputs)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_file_sits_beside_the_secret_one() {
        assert_eq!(
            public_key_path(Path::new("k/perch.key")),
            Path::new("k/perch.pub")
        );
        assert_eq!(public_key_path(Path::new("fleet")), Path::new("fleet.pub"));
        assert_eq!(
            public_key_path(Path::new("a.secret")),
            Path::new("a.secret.pub")
        );
    }

    #[test]
    fn keygen_writes_a_usable_pair_with_a_private_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("perch.key");
        let report = keygen(&secret, false).unwrap();
        let signing = read_signing_key(&secret).unwrap();
        let public = read_verifying_key(dir.path().join("perch.pub")).unwrap();
        assert_eq!(signing.verifying_key(), public);
        assert_eq!(report.key_id, bundle::key_id(&public));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the two key files: no temporaries left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn two_generated_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(&dir.path().join("a.key"), false).unwrap();
        let b = keygen(&dir.path().join("b.key"), false).unwrap();
        assert_ne!(a.key_id, b.key_id);
    }
}
