//! Canary rollouts of a signed bundle to a device group, the operator side of the
//! protocol in [`perch_runtime::rollout`].
//!
//! [`Controller`] is a pure state machine: device reports and metrics go in, with the
//! time passed in by the caller; documents to publish and log lines come out as
//! [`Effect`]s. It reads no clock and does no I/O, so it is tested with a virtual
//! clock. [`operator`] is the thin MQTT loop around it that `perch rollout` runs.
//!
//! # Gates
//!
//! The canary cohort is the devices in the current stage's cohort, counted over the
//! metrics reports they sent of the rollout's model and version since the stage started
//! (the window). Its latency quantiles come from merging the devices' histograms
//! ([`Histogram::merge`](perch_runtime::histogram::Histogram::merge)), never from
//! averaging per-device percentiles; its error rate is Σ errors / Σ (ok + errors); its
//! throughput is Σ ok / Σ reported interval seconds, the inference rate of an average
//! canary device ([`Metric::Throughput`]).
//!
//! - A latency or error-rate gate that fails once the window holds at least the plan's
//!   `min_requests` ([`MIN_REQUESTS`] by default) aborts the rollout at once, in any
//!   stage, running or paused; so does any device reporting `rolled_back`. Fewer
//!   requests are never judged, whether the soak is over or not.
//! - When the stage has soaked (`soak_ms` of controller time since it started), every
//!   gate is judged over the whole window, throughput included, provided at least
//!   `min_devices` canary devices reported and (with gates) the window holds
//!   `min_requests`; all met → the next stage (or, after the last, completed); one
//!   failed → aborted; too few devices or requests → wait, logged once. Canary devices
//!   reporting `unexercised` (their own soak saw too few requests to judge the bundle)
//!   hold the stage too unless the plan says [`Unexercised::Accept`].
//! - Only devices that reported serving the bundle (active, unexercised, confirmed)
//!   count in the canary, and a metrics report whose sequence number the device already
//!   sent counts once ([`RolloutState::ignored`] counts the rest).
//! - The rest of the group (reports of any other model) gets the same figures, for
//!   comparison in [`StatusReport`].
//!
//! ```
//! use perch_runtime::rollout::BundleRef;
//! use perch_tools::rollout::{
//!     parse_gates, parse_stages, Clock, Controller, Effect, Plan, Unexercised,
//! };
//!
//! let bundle = BundleRef::describe("kws", "1.3.0", 8, &[7u8; 5000], 1024);
//! let plan = Plan {
//!     group: "kitchen".into(),
//!     model: None,
//!     rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [0xab, 0xcd, 0xef]),
//!     bundle,
//!     stages: parse_stages("10,50,100")?,
//!     soak_ms: 600_000,
//!     gates: parse_gates("p99<10ms,error_rate<1%")?,
//!     min_devices: 1,
//!     device_soak_s: 60,
//!     device_soak_requests: 100,
//!     min_requests: 100,
//!     unexercised: Unexercised::Wait,
//!     fresh_s: 600,
//!     fleet: None,
//! };
//! let (controller, effects) = Controller::start(plan, Clock::new(0, 1_790_000_000_000))?;
//! assert!(matches!(&effects[0], Effect::PublishDocument(d) if d.percent_bp == 1_000));
//! assert_eq!(controller.state().stage, 0);
//! # Ok::<(), perch_tools::rollout::PlanError>(())
//! ```

mod cohort;
mod controller;
mod device_command;
mod error;
mod exposition;
mod journal;
pub mod operator;
mod plan;
mod report;
mod status;
mod store;

pub use cohort::{CohortFigures, MetricSample};
pub use controller::{
    Clock, Command, Controller, Decision, DeviceView, Effect, RolloutState, MAX_SAMPLES_PER_DEVICE,
    STATE_FORMAT,
};
pub use device_command::send_repository_command;
pub use exposition::render as render_metrics;
pub use journal::JournalPoint;
pub use plan::{
    parse_duration_ms, parse_fleet, parse_gates, parse_size, parse_stages, Gate, Metric, Plan,
    PlanError, Unexercised, MIN_REQUESTS,
};
pub use report::render as render_report;
pub use status::{DeviceLine, StageLine, StatusReport};

#[cfg(test)]
mod tests;
