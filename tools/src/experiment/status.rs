//! `perch experiment status`: a device's `GET /v2/experiments/{name}` document, with
//! each variant's error rate tested against the default variant's.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::stats::{two_proportion, ZTest};

/// Why the status could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The device URL is not `http://host:port`.
    #[error("--device {0:?} must be http://HOST:PORT")]
    Url(String),
    /// The device did not answer.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// The device answered with an error (404: no such experiment).
    #[error("{url} answered {status}: {reason}")]
    Refused {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The device's reason.
        reason: String,
    },
    /// The answer is not an experiment's status document.
    #[error("{url} did not answer with an experiment's status: {reason}")]
    Document {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One routed variant's figures, as the device reports them, with the test against
/// the default variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The variant's name.
    pub name: String,
    /// The repository model serving it.
    pub model: String,
    /// Its share of the entities, in percent.
    pub share_percent: f64,
    /// Whether requests without an entity id go to it.
    pub default: bool,
    /// Requests it answered.
    pub requests: u64,
    /// Of those, answered with an error.
    pub errors: u64,
    /// `errors / requests`, if it answered any.
    pub error_rate: Option<f64>,
    /// Median service time of the successful ones, in ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, in ms.
    pub p99_ms: Option<f64>,
    /// Its error rate against the default variant's (none for the default itself, or
    /// without requests).
    #[serde(default)]
    pub error_rate_test: Option<ZTest>,
}

/// One shadow's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    /// The shadow's name.
    pub name: String,
    /// The repository model it runs.
    pub model: String,
    /// Copies it ran.
    pub runs: u64,
    /// Of those, failed.
    pub errors: u64,
    /// Copies dropped because the queue was full.
    pub dropped: u64,
    /// Median service time, in ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, in ms.
    pub p99_ms: Option<f64>,
    /// Answers compared with the served one.
    pub compared: u64,
    /// Share of the compared answers whose argmax matched (classifiers).
    pub agreement: Option<f64>,
    /// Mean over compared answers of the max relative difference (regressors).
    pub mean_max_relative_difference: Option<f64>,
    /// The largest max relative difference seen.
    pub max_relative_difference: f64,
}

/// An experiment's status on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentStatus {
    /// The device asked.
    #[serde(default)]
    pub device: String,
    /// The experiment's name.
    pub name: String,
    /// The default variant.
    pub default: String,
    /// Where entity ids come from.
    pub entity_id: String,
    /// How shadows are compared.
    pub agreement: String,
    /// The routed variants.
    pub variants: Vec<Variant>,
    /// The shadows.
    pub shadows: Vec<Shadow>,
}

impl ExperimentStatus {
    /// Reads the device's document (`body`, from `device`) and tests each variant's
    /// error rate against the default variant's.
    ///
    /// # Errors
    ///
    /// [`StatusError::Document`] when `body` is not a status document.
    pub fn from_document(device: &str, body: &[u8]) -> Result<ExperimentStatus, StatusError> {
        let mut status: ExperimentStatus =
            serde_json::from_slice(body).map_err(|e| StatusError::Document {
                url: device.to_string(),
                reason: e.to_string(),
            })?;
        status.device = device.to_string();
        let default = status.variants.iter().find(|v| v.default).cloned();
        if let Some(default) = default {
            for variant in status.variants.iter_mut().filter(|v| !v.default) {
                variant.error_rate_test = two_proportion(
                    variant.errors,
                    variant.requests,
                    default.errors,
                    default.requests,
                );
            }
        }
        Ok(status)
    }
}

/// Fetches experiment `name`'s status from the agent at `device` (`http://host:port`).
///
/// # Errors
///
/// See [`StatusError`].
pub fn fetch(device: &str, name: &str) -> Result<ExperimentStatus, StatusError> {
    let base = device.trim_end_matches('/');
    if !base.starts_with("http://") || base.len() <= "http://".len() {
        return Err(StatusError::Url(device.to_string()));
    }
    let url = format!("{base}/v2/experiments/{name}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| StatusError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| StatusError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    if status != 200 {
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| Some(v.get("error")?.as_str()?.to_string()))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(StatusError::Refused {
            url,
            status,
            reason,
        });
    }
    ExperimentStatus::from_document(device, &body).map_err(|e| match e {
        StatusError::Document { reason, .. } => StatusError::Document { url, reason },
        other => other,
    })
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl fmt::Display for ExperimentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "experiment {} on {} (entity id: {}, default variant: {})",
            self.name, self.device, self.entity_id, self.default
        )?;
        writeln!(
            f,
            "{:<12} {:<16} {:>7} {:>9} {:>7} {:>10} {:>9} {:>9} {:>8} {:>9}",
            "variant",
            "model",
            "share",
            "requests",
            "errors",
            "error rate",
            "p50 ms",
            "p99 ms",
            "z",
            "p-value"
        )?;
        for v in &self.variants {
            let name = if v.default {
                format!("{} *", v.name)
            } else {
                v.name.clone()
            };
            let (z, p) = match &v.error_rate_test {
                Some(t) => (format!("{:.3}", t.z), format!("{:.4}", t.p_value)),
                None => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<12} {:<16} {:>6}% {:>9} {:>7} {:>10} {:>9} {:>9} {:>8} {:>9}",
                name,
                v.model,
                v.share_percent,
                v.requests,
                v.errors,
                opt(v.error_rate, 4),
                opt(v.p50_ms, 3),
                opt(v.p99_ms, 3),
                z,
                p
            )?;
        }
        writeln!(f, "* default; z and p-value: error rate against the default's (two-proportion z-test, two-sided)")?;
        if self.shadows.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "\n{:<12} {:<16} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>12}",
            "shadow",
            "model",
            "runs",
            "errors",
            "dropped",
            "p50 ms",
            "p99 ms",
            "compared",
            "agreement",
            "max rel diff"
        )?;
        for s in &self.shadows {
            writeln!(
                f,
                "{:<12} {:<16} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>12}",
                s.name,
                s.model,
                s.runs,
                s.errors,
                s.dropped,
                opt(s.p50_ms, 3),
                opt(s.p99_ms, 3),
                s.compared,
                opt(s.agreement, 4),
                format!("{:.3e}", s.max_relative_difference),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_is_tested_against_the_default_and_a_bad_document_is_refused() {
        let document = br#"{"name":"e","default":"a","entity_id":"header:x","agreement":"argmax",
            "variants":[
              {"name":"a","model":"m1","share_percent":50.0,"default":true,"requests":100,"errors":10,"error_rate":0.1,"p50_ms":1.0,"p99_ms":2.0},
              {"name":"b","model":"m2","share_percent":50.0,"default":false,"requests":100,"errors":20,"error_rate":0.2,"p50_ms":null,"p99_ms":null}],
            "shadows":[]}"#;
        let status = ExperimentStatus::from_document("http://d:1", document).unwrap();
        assert_eq!(status.variants[0].error_rate_test, None);
        let test = status.variants[1].error_rate_test.unwrap();
        assert!((test.z - 1.980_295_085_953_348_8).abs() < 1e-9, "{test:?}");
        let text = status.to_string();
        assert!(text.contains("a *") && text.contains("0.0477"), "{text}");
        let err = ExperimentStatus::from_document("http://d:1", b"{\"error\":1}").unwrap_err();
        assert!(
            err.to_string().starts_with("http://d:1 did not answer"),
            "{err}"
        );
        assert!(matches!(fetch("d:1", "e"), Err(StatusError::Url(_))));
    }
}
