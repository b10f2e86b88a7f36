//! Command-line tools some tests drive (promtool, chromium), with the same policy as
//! mosquitto: CI installs them and sets `PERCH_REQUIRE_TOOLS=1`, which makes a missing
//! one fail the test; on a developer's machine without it the test says on the
//! terminal that it is skipped and returns early.

use std::io::Write;
use std::path::PathBuf;

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
