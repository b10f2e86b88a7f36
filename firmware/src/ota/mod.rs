//! Over-the-air model updates on the device: the device side of a canary rollout.
//!
//! The logic is the sans-IO [`machine::Machine`]; [`Updater`] is its executor, the
//! facade the agent drives. The agent
//!
//! 1. opens it at start-up ([`Updater::open`]) and calls [`Updater::boot`] before
//!    loading a model: it counts the start (a crash loop after an activation rolls back
//!    here) and says which slot file to serve, or `None` for the configured model;
//! 2. tells it which model serves ([`Updater::set_serving`]), subscribes to
//!    [`Updater::subscriptions`] and feeds it, from a blocking thread, every message on
//!    them ([`Event::Document`], [`Event::Chunk`]), a [`Event::Tick`] about every
//!    second (with an [`Event::WallClock`] while the clock is synchronized), and an
//!    [`Event::Interval`] with each metrics report interval;
//! 3. carries out the [`Effect`]s each call returns, in order: publish chunk requests
//!    (QoS 0), send reports through the spool (QoS 1), swap the served model.
//!
//! Files, all in [`OtaConfig::dir`]: `ota.json` (the machine's [`State`]), `slots/`
//! ([`Slots`]), `download.part` and `download.json` ([`Download`]),
//! `serve-configured` (present after a roll-back to the configured model, which then
//! serves), `previous-configured` (present while the configured model is what a
//! roll-back returns to) and `installing` (present while a downloaded bundle is loaded
//! and tested: found at start-up, the agent stopped during that — a device build aborts
//! on an engine panic — and after [`MAX_INSTALL_ATTEMPTS`] such starts the rollout
//! fails instead of crashing the agent again).
//!
//! ```no_run
//! use std::time::Duration;
//! use perch_firmware::ota::{Event, OtaConfig, Updater};
//!
//! # fn example(keys: Vec<perch_runtime::bundle::VerifyingKey>) -> Result<(), perch_firmware::ota::OtaError> {
//! let config = OtaConfig {
//!     dir: "/var/lib/perch/ota".into(),
//!     group: "kitchen".into(),
//!     chunk_timeout: Duration::from_secs(5),
//!     stall_timeout: Duration::from_secs(600),
//!     max_probation_boots: 3,
//!     warmup_runs: 20,
//!     install_timeout: Duration::from_secs(300),
//!     model: None,
//!     slo: Default::default(),
//! };
//! let mut updater = Updater::open(config, "pi-1", keys)?;
//! let boot = updater.boot()?;
//! // ... load boot.serve (or the configured model), connect, subscribe, then:
//! for effect in updater.handle(Event::Tick) {
//!     // publish, report, or swap the model
//! #   drop(effect);
//! }
//! # Ok(()) }
//! ```

#[cfg(test)]
mod crash_points;
pub mod download;
mod error;
pub mod freshness;
pub mod install;
pub mod machine;
mod refusal;
pub mod soak;
mod updater;

pub use download::Download;
pub use error::OtaError;
pub use machine::{Action, Machine, MachineConfig, State};
pub use updater::{
    Boot, Effect, Event, OtaConfig, Updater, DEFAULT_INSTALL_TIMEOUT, DEFAULT_STALL_TIMEOUT,
    INSTALLING_FILE, MAX_INSTALL_ATTEMPTS, PREVIOUS_CONFIGURED_FILE, SERVE_CONFIGURED_FILE,
    STATE_FILE,
};
