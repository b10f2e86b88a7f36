//! The device agent behind `perchd`.
//!
//! [`agent::run`] is the whole agent: it loads a model or a signed bundle
//! ([`load::load`]: verify, self-test against golden outputs, warm up), serves it over
//! MQTT ([`mqtt`]) and the Open Inference Protocol v2 over HTTP ([`http`]) through one
//! [`service::InferenceService`], publishes metrics reports and health as the core's
//! wire messages, and keeps undelivered reports in an on-disk [`spool`] while the broker
//! is away. With no broker configured it starts one inside itself ([`broker`]).
//! Settings come from [`config`]; `docs/protocol.md` lists every topic and
//! endpoint.
//!
//! ```no_run
//! use perch_firmware::config::Config;
//! use perch_firmware::load;
//!
//! let config = Config::new("gw-1".parse().unwrap(), "models/kws-dscnn/model.onnx");
//! let loaded = load::load(&config.model)?;
//! assert!(loaded.boot.ready());
//! # Ok::<(), load::LoadError>(())
//! ```
#![warn(missing_docs)]

pub mod agent;
pub mod body;
pub mod broker;
pub mod clock;
pub mod config;
pub mod device;
pub mod experiment;
pub mod exposition;
pub mod http;
pub mod load;
pub mod mqtt;
pub mod ota;
pub mod process;
pub mod prometheus;
pub mod repository;
pub mod sensor;
pub mod service;
pub mod slots;
pub mod spool;
pub mod systemd;

pub use load::BootReport;
pub use process::{rss_kib, use_one_malloc_arena};

/// Test fixtures shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use perch_runtime::bundle;
    use perch_runtime::engine::{LoadOptions, Model};
    use perch_runtime::rollout::{self, BundleRef, Phase, RolloutDocument, MIN_CHUNK_SIZE};

    /// An unsigned rollout document releasing `bundle` (kws `version`, `sequence`) to the
    /// whole group `kitchen` at `revision`: running, a 60 s soak of at least 100
    /// requests, no freshness bound or expiry, chunks of 16 × the smallest size.
    pub(crate) fn kws_release(
        rollout_id: &str,
        version: &str,
        sequence: u64,
        bundle: &[u8],
        revision: u64,
    ) -> RolloutDocument {
        RolloutDocument {
            format: rollout::FORMAT,
            group: "kitchen".into(),
            rollout_id: rollout_id.into(),
            revision,
            issued: "2026-11-26T12:00:00Z".into(),
            phase: Phase::Running,
            percent_bp: 10_000,
            soak_s: 60,
            soak_min_requests: 100,
            fresh_s: 0,
            expires_unix_s: 0,
            model: None,
            bundle: BundleRef::describe("kws", version, sequence, bundle, MIN_CHUNK_SIZE * 16),
        }
    }

    /// R2 (kws-dscnn) packed into a bundle named `kws` with `sequence` and `version`, a
    /// p99 SLO of 25 ms, signed with `key`.
    pub(crate) fn pack_kws(
        key: &bundle::SigningKey,
        sequence: u64,
        version: &str,
    ) -> bundle::Bundle {
        pack_kws_with(key, sequence, version, |_| {})
    }

    /// [`pack_kws`] with `change` applied to the contents before signing.
    pub(crate) fn pack_kws_with(
        key: &bundle::SigningKey,
        sequence: u64,
        version: &str,
        change: impl FnOnce(&mut bundle::BundleContents),
    ) -> bundle::Bundle {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kws-dscnn");
        let model = Model::load(dir.join("model.onnx"), &LoadOptions::new()).unwrap();
        let read = |name: &str| std::fs::read(dir.join("golden").join(name)).unwrap();
        let mut contents = bundle::BundleContents {
            name: "kws".into(),
            version: version.parse().unwrap(),
            sequence,
            created_unix: 0,
            model_format: bundle::ModelKind::Onnx,
            model: std::fs::read(dir.join("model.onnx")).unwrap(),
            signature: bundle::TensorSignature::from_metadata(model.metadata()),
            golden_inputs: vec![read("input_0.npy")],
            golden_outputs: vec![read("output_0.npy")],
            tolerance: 1e-4,
            slo: bundle::Slo {
                p99_ms: Some(25.0),
                ..Default::default()
            },
            schema: None,
        };
        change(&mut contents);
        bundle::pack(&contents, key).unwrap()
    }
}
