//! Command-line tools some tests drive (promtool, chromium), with the same policy as
//! mosquitto: CI installs them and sets `PERCH_REQUIRE_TOOLS=1`, which makes a missing
//! one fail the test; on a developer's machine without it the test says on the
//! terminal that it is skipped and returns early.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The variable that makes a missing tool fail the tests that need it.
pub const REQUIRE_TOOLS_VAR: &str = "PERCH_REQUIRE_TOOLS";

/// `name` on `PATH`, or `None` after saying on the terminal that `test` is skipped
/// and that `apt-get install {package}` provides it.
///
/// # Panics
///
/// The tool is missing and [`REQUIRE_TOOLS_VAR`] is set.
pub fn tool_or_skip(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_TOOLS_VAR).is_none(),
            "{test}: {name} is not installed and {REQUIRE_TOOLS_VAR} is set"
        );
        // Straight to the terminal: `eprintln!` would be captured, and hidden for a test
        // that passes.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: {name} is not installed, skipped (apt-get install {package}; \
             {REQUIRE_TOOLS_VAR}=1 makes this a failure)"
        );
    }
    found
}

/// Runs `promtool check metrics` on a Prometheus text exposition and asserts that it
/// passes with no lint finding (its output in the message otherwise); skipped as
/// [`tool_or_skip`] says when promtool is missing.
///
/// # Panics
///
/// promtool finds a problem, or is missing and [`REQUIRE_TOOLS_VAR`] is set.
pub fn promtool_check_metrics(test: &str, exposition: &[u8]) {
    let Some(promtool) = tool_or_skip("promtool", "prometheus", test) else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition)
        .expect("promtool reads the exposition");
    let output = child.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "{test}: promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
