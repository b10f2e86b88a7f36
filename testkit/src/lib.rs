//! What Perch's integration tests share to run real processes and brokers, so that
//! each does it the same way:
//!
//! - [`Port`]: a port for a server that cannot take a listener (mosquitto, rumqttd),
//!   reserved across test processes instead of bound, dropped and handed on; servers
//!   that can take a listener or bind `:0` and report their port do that instead;
//! - [`Process`]: a child process with its output in a file, killed when dropped,
//!   whose log a failing test prints; [`Process::wait_for_line`] reads what it reports;
//! - [`Mosquitto`]: a real broker, and one policy when it is missing: CI requires it
//!   (`PERCH_REQUIRE_MOSQUITTO=1`), a developer's run says which tests it skips;
//! - [`tool_or_skip`]: promtool and chromium, with the same policy
//!   (`PERCH_REQUIRE_TOOLS=1` in CI);
//! - [`raise_open_files`]: tests that need many descriptors raise their own limit;
//! - [`workspace_binary`]: `perchd` and `perch` for the tests of another package;
//! - [`wait_until`]: conditions as verdicts, the clock only as a bound;
//! - [`onnx`]: small ONNX models written by hand for the scenario at hand;
//! - [`SplitMix64`]: "random" test inputs that are the same on every run.
//!
//! ```no_run
//! use perch_testkit::{Mosquitto, PATIENCE};
//!
//! let dir = tempfile_dir();
//! let Some(broker) = Mosquitto::start("my_test", &dir) else {
//!     return; // skipped, and said so
//! };
//! println!("mosquitto on 127.0.0.1:{}", broker.port());
//! # fn tempfile_dir() -> std::path::PathBuf { std::env::temp_dir() }
//! ```
#![warn(missing_docs)]

mod binaries;
mod limits;
mod mosquitto;
pub mod onnx;
mod ports;
mod process;
mod rng;
mod tools;
mod wait;

pub use binaries::{workspace_binary, workspace_root};
pub use limits::raise_open_files;
pub use mosquitto::{Mosquitto, REQUIRE_VAR};
pub use ports::Port;
pub use process::Process;
pub use rng::SplitMix64;
pub use tools::{promtool_check_metrics, tool_or_skip, REQUIRE_TOOLS_VAR};
pub use wait::{wait_until, PATIENCE};
