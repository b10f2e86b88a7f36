//! The device agent behind `perchd`.
//!
//! [`agent::run`] is the whole agent: it loads a model or a signed bundle
//! ([`agent::load`]: verify, self-test against golden outputs, warm up), serves it over
//! MQTT ([`mqtt`]) and the Open Inference Protocol v2 over HTTP ([`http`]) through one
//! [`service::InferenceService`], publishes metrics reports and health as the core's
//! wire messages, and keeps undelivered reports in an on-disk [`spool`] while the broker
//! is away. With no broker configured it starts one inside itself ([`broker`]).
//! Settings come from [`config`]; `docs/protocol.md` lists every topic and
//! endpoint.
//!
//! ```no_run
//! use perch_firmware::agent;
//! use perch_firmware::config::Config;
//!
//! let config = Config::new("gw-1".parse().unwrap(), "models/kws-dscnn/model.onnx");
//! let loaded = agent::load(&config.model)?;
//! assert!(loaded.boot.ready());
//! # Ok::<(), agent::AgentError>(())
//! ```
#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod http;
pub mod mqtt;
pub mod ota;
pub mod prometheus;
pub mod sensor;
pub mod service;
pub mod slots;
pub mod spool;
pub mod systemd;

use std::time::Duration;

use perch_runtime::engine::SelfTestReport;
use perch_runtime::wire::{Health, MetricsReport, ModelState};

/// The outcome of a boot.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The health message the device would publish.
    pub health: Health,
    /// Latencies of the warm-up runs as a metrics report (empty if the self-test failed).
    pub warmup: MetricsReport,
    /// Output comparison of a passing self-test.
    pub self_test: Option<SelfTestReport>,
    /// Why the self-test failed, when it did.
    pub failure: Option<String>,
    /// Load and optimize time.
    pub load_time: Duration,
}

impl BootReport {
    /// Whether the model passed its self-test and may serve.
    pub fn ready(&self) -> bool {
        self.health.state == ModelState::Ready
    }
}

/// Resident set size of this process, from `/proc/self/status` (Linux only).
pub fn rss_kib() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Makes glibc's malloc use one arena for every thread, unless `MALLOC_ARENA_MAX` in the
/// environment says otherwise. Call first thing in `main`, before any thread starts.
///
/// glibc gives threads that allocate at once their own arenas (up to eight per core) and
/// keeps what is freed in each. Every inference allocates the model's activations and
/// frees them on whichever thread ran it (tokio's blocking threads for HTTP, the MQTT
/// thread, the sensor), so each of those arenas ends up holding a copy: serving R4
/// (MobileNetV2) over HTTP, 12–13 MiB of heap with the default against 10–11 MiB with
/// one arena, 36–44 against 33–35 MiB under four concurrent clients, at the same
/// throughput (BENCHMARKS.md). The cost is a lock on allocations larger than glibc's
/// per-thread cache (1 KiB), which inferences make a few hundred times each. A no-op
/// outside glibc.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and changes a malloc setting; it is safe to
        // call at any time (glibc takes its own lock).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Test fixtures shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use perch_runtime::bundle;
    use perch_runtime::engine::{LoadOptions, Model};

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
        };
        change(&mut contents);
        bundle::pack(&contents, key).unwrap()
    }
}
