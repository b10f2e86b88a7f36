//! The device agent behind `perchd`.
//!
//! What exists today is the agent's boot sequence: load the model, self-test it against
//! its golden outputs, warm it up while recording latencies, and describe the result as
//! the core's wire messages ([`Health`], [`MetricsReport`]) — the same bytes the agent
//! will publish over MQTT. Serving (MQTT, Open Inference Protocol over HTTP) and
//! over-the-air updates build on this.
//!
//! ```no_run
//! use perch_firmware::{boot, BootConfig};
//!
//! let report = boot(&BootConfig::new("models/kws-dscnn/model.onnx"))?;
//! assert!(report.ready());
//! # Ok::<(), perch_firmware::AgentError>(())
//! ```
#![warn(missing_docs)]

pub mod backoff;
pub mod prometheus;
pub mod spool;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perch_runtime::engine::{EngineError, Golden, LoadOptions, Model, SelfTestReport, Tolerance};
use perch_runtime::histogram::Histogram;
use perch_runtime::wire::{self, Health, MetricsReport, ModelId, ModelState, Version};

/// What can stop the agent from booting a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The engine refused the model or its golden data.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A wire message could not be built (a name too long, say).
    #[error("{0}")]
    Wire(perch_runtime::Error),
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The model file (ONNX or NNEF).
    pub model: PathBuf,
    /// Golden folder; `golden/` beside the model when `None`.
    pub golden: Option<PathBuf>,
    /// Golden output variant (`w8`); guessed from `model.<variant>.onnx` when `None`.
    pub variant: Option<String>,
    /// The model's name in reports (at most 32 bytes); the model's folder name by default.
    pub name: Option<String>,
    /// The model's version in reports.
    pub version: Version,
    /// Warm-up inferences after the self-test.
    pub warmup_runs: u32,
}

impl BootConfig {
    /// Boots `model` with its golden folder beside it and 20 warm-up runs.
    pub fn new(model: impl Into<PathBuf>) -> BootConfig {
        BootConfig {
            model: model.into(),
            golden: None,
            variant: None,
            name: None,
            version: Version::new(0, 0, 0),
            warmup_runs: 20,
        }
    }

    fn golden_dir(&self) -> PathBuf {
        self.golden
            .clone()
            .unwrap_or_else(|| self.model.parent().unwrap_or(Path::new(".")).join("golden"))
    }

    fn variant(&self) -> Option<String> {
        self.variant.clone().or_else(|| {
            let name = self.model.file_name()?.to_str()?;
            let stem = name
                .strip_suffix(".onnx")
                .or_else(|| name.strip_suffix(".nnef.tgz"))?;
            stem.split_once('.').map(|(_, v)| v.to_string())
        })
    }

    fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.model
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into())
        })
    }
}

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

/// Loads, self-tests and warms up the model.
///
/// A model that does not load is an error; one that loads but fails its self-test is
/// a report in state [`ModelState::SelfTestFailed`], since the agent must keep running
/// and say so rather than exit.
pub fn boot(config: &BootConfig) -> Result<BootReport, AgentError> {
    let started = Instant::now();
    let model = Model::load(&config.model, &LoadOptions::new())?;
    let load_time = started.elapsed();
    let golden = Golden::load_variant(config.golden_dir(), config.variant().as_deref())?;
    let id = ModelId::new(&config.model_name(), config.version).map_err(AgentError::Wire)?;

    let mut session = model.session()?;
    let mut latency = Histogram::new();
    let (state, self_test, failure) = match session.self_test(&golden, Tolerance::default()) {
        Ok(report) => {
            let inputs = golden.input_refs()?;
            for _ in 0..config.warmup_runs {
                let t = Instant::now();
                drop(session.run(&inputs)?);
                latency.record(t.elapsed());
            }
            (ModelState::Ready, Some(report), None)
        }
        Err(e) => (ModelState::SelfTestFailed, None, Some(e.to_string())),
    };
    let uptime_s = 0;
    let health = Health {
        format: wire::FORMAT_VERSION,
        uptime_s,
        model: Some(id.clone()),
        state,
        boot_count: 1,
        rss_kib: rss_kib().unwrap_or(0),
        last_error: failure.as_deref().map(wire::truncated),
    };
    let warmup = MetricsReport {
        format: wire::FORMAT_VERSION,
        seq: 0,
        uptime_s,
        interval_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
        model: id,
        ok: config.warmup_runs * u32::from(self_test.is_some()),
        errors: 0,
        latency,
    };
    Ok(BootReport {
        health,
        warmup,
        self_test,
        failure,
        load_time,
    })
}

/// Resident set size of this process, from `/proc/self/status` (Linux only).
pub fn rss_kib() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    #[test]
    fn a_reference_model_boots_ready_with_warm_up_latencies() {
        let report = boot(&BootConfig::new(models().join("kws-dscnn/model.onnx"))).unwrap();
        assert!(report.ready(), "{:?}", report.failure);
        assert_eq!(
            report.health.model.as_ref().unwrap().name.as_str(),
            "kws-dscnn"
        );
        assert_eq!(report.warmup.latency.count(), 20);
        assert_eq!(report.warmup.ok, 20);
        let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
        let bytes = report.warmup.encode(&mut buf).unwrap();
        assert_eq!(MetricsReport::decode(bytes).unwrap(), report.warmup);
    }

    #[test]
    fn a_model_that_fails_its_self_test_boots_into_the_failed_state_with_the_reason() {
        // The float model against its int8 twin's golden outputs.
        let mut config = BootConfig::new(models().join("anomaly-ae/model.onnx"));
        config.variant = Some("w8".into());
        let report = boot(&config).unwrap();
        assert_eq!(report.health.state, ModelState::SelfTestFailed);
        let reason = report.health.last_error.as_deref().unwrap();
        assert!(
            reason.starts_with("self-test failed on output 0"),
            "{reason}"
        );
        assert_eq!(report.warmup.latency.count(), 0);
    }

    #[test]
    fn a_model_that_does_not_load_is_an_error() {
        let err = boot(&BootConfig::new(
            models().join("fixtures/per-axis-dq-opset11.onnx"),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("DequantizeLinear"), "{err}");
    }

    #[test]
    fn a_name_over_32_bytes_is_refused() {
        let mut config = BootConfig::new(models().join("digits-mlp/model.onnx"));
        config.name = Some("x".repeat(33));
        assert!(matches!(boot(&config), Err(AgentError::Wire(_))));
    }
}
