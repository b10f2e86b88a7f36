//! The Open Inference Protocol statistics extension: per-model counts and times, kept
//! lock-free while serving and written in Triton's JSON shape
//! (`GET /v2/models/{name}/stats`).
//!
//! The `success` and `fail` counts are the service's own ok and error counters, the
//! ones `/metrics` publishes as `prediction_total{status}`, so the two never disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use perch_runtime::wire::ModelId;
use serde_json::json;

/// A count and the total time of what it counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timed {
    /// How many times it happened.
    pub count: u64,
    /// Their summed duration in nanoseconds.
    pub ns: u64,
}

/// A snapshot of one model's statistics since the service started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Milliseconds since the Unix epoch of the last successful inference; 0 if none.
    pub last_inference_ms: u64,
    /// Inferences run, counting each item of a batch.
    pub inference_count: u64,
    /// Model executions (one per successful request, whatever its batch size).
    pub execution_count: u64,
    /// Requests answered with outputs, and their time from body to encoded answer.
    pub success: Timed,
    /// Requests answered with an error, and the time spent on those that got as far
    /// as the service.
    pub fail: Timed,
    /// Time spent waiting for an inference slot.
    pub queue: Timed,
    /// Decoding and checking the inputs, up to the engine's start.
    pub compute_input: Timed,
    /// The engine's run.
    pub compute_infer: Timed,
    /// Copying the outputs out of the engine and encoding them.
    pub compute_output: Timed,
}

#[derive(Debug, Default)]
struct AtomicTimed {
    count: AtomicU64,
    ns: AtomicU64,
}

impl AtomicTimed {
    fn add(&self, count: u64, took: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    fn get(&self) -> Timed {
        Timed {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The counters behind [`Statistics`], updated lock-free by requests.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    success_ns: AtomicU64,
    fail_ns: AtomicU64,
    queue: AtomicTimed,
    compute_input: AtomicTimed,
    compute_infer: AtomicTimed,
    compute_output: AtomicTimed,
}

impl Stats {
    /// One engine run of `batch` items and its three phases.
    pub(crate) fn executed(&self, batch: u64, input: Duration, infer: Duration, output: Duration) {
        self.inference_count.fetch_add(batch, Ordering::Relaxed);
        self.compute_input.add(1, input);
        self.compute_infer.add(1, infer);
        self.compute_output.add(1, output);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Decoding time, added to the input phase of the run that follows (or of none, for
    /// a request refused before it ran).
    pub(crate) fn decoded(&self, took: Duration) {
        self.compute_input.add(0, took);
    }

    /// Encoding time, added to the output phase of the run already counted.
    pub(crate) fn encoded(&self, took: Duration) {
        self.compute_output.add(0, took);
    }

    /// The time of a request answered with outputs (counted by the service).
    pub(crate) fn succeeded(&self, took: Duration) {
        self.success_ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    /// The time of a request answered with an error (counted by the service).
    pub(crate) fn failed(&self, took: Duration) {
        self.fail_ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    /// A wait for an inference slot.
    pub(crate) fn queued(&self, took: Duration) {
        self.queue.add(1, took);
    }

    /// The snapshot, with the service's ok and error counts.
    pub(crate) fn snapshot(&self, ok: u64, errors: u64) -> Statistics {
        let compute_infer = self.compute_infer.get();
        Statistics {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: compute_infer.count,
            success: Timed {
                count: ok,
                ns: self.success_ns.load(Ordering::Relaxed),
            },
            fail: Timed {
                count: errors,
                ns: self.fail_ns.load(Ordering::Relaxed),
            },
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer,
            compute_output: self.compute_output.get(),
        }
    }
}

/// The statistics document for the models given, in Triton's shape:
/// `{"model_stats": [{"name", "version", "last_inference", "inference_count",
/// "execution_count", "inference_stats": {"success", "fail", "queue",
/// "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"}
/// (each `{"count", "ns"}`), "batch_stats": []}]}`.
pub fn encode_statistics(models: &[(&ModelId, Statistics)]) -> Vec<u8> {
    let timed = |t: Timed| json!({"count": t.count, "ns": t.ns});
    let stats: Vec<_> = models
        .iter()
        .map(|(id, s)| {
            json!({
                "name": id.name.as_str(),
                "version": id.version.to_string(),
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": timed(s.success),
                    "fail": timed(s.fail),
                    "queue": timed(s.queue),
                    "compute_input": timed(s.compute_input),
                    "compute_infer": timed(s.compute_infer),
                    "compute_output": timed(s.compute_output),
                    "cache_hit": timed(Timed::default()),
                    "cache_miss": timed(Timed::default()),
                },
                "batch_stats": [],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "model_stats": stats })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_runtime::wire::Version;

    #[test]
    fn the_document_has_triton_s_fields_and_the_service_s_counts() {
        let stats = Stats::default();
        stats.queued(Duration::from_nanos(5));
        stats.executed(
            8,
            Duration::from_nanos(10),
            Duration::from_nanos(100),
            Duration::from_nanos(20),
        );
        stats.encoded(Duration::from_nanos(3));
        stats.succeeded(Duration::from_nanos(140));
        stats.failed(Duration::from_nanos(7));
        let snapshot = stats.snapshot(1, 2);
        assert!(snapshot.last_inference_ms > 1_600_000_000_000);
        let id = ModelId::new("m", Version::new(1, 2, 3)).unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&encode_statistics(&[(&id, snapshot)])).unwrap();
        let model = &body["model_stats"][0];
        assert_eq!(model["name"], "m");
        assert_eq!(model["version"], "1.2.3");
        assert_eq!(model["inference_count"], 8);
        assert_eq!(model["execution_count"], 1);
        let s = &model["inference_stats"];
        assert_eq!(s["success"], json!({"count": 1, "ns": 140}));
        assert_eq!(s["fail"], json!({"count": 2, "ns": 7}));
        assert_eq!(s["queue"], json!({"count": 1, "ns": 5}));
        assert_eq!(s["compute_input"], json!({"count": 1, "ns": 10}));
        assert_eq!(s["compute_infer"], json!({"count": 1, "ns": 100}));
        assert_eq!(s["compute_output"], json!({"count": 1, "ns": 23}));
    }
}
