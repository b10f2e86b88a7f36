//! One module per subcommand: its arguments and how it prints its report.
//!
//! Exit codes: 0 success, 1 a check ran and failed (golden mismatch, verification
//! failure), 2 an error (bad arguments, unreadable or refused input).

pub mod batch;
pub mod bench;
pub mod convert;
pub mod device;
pub mod experiment;
pub mod inspect;
pub mod keygen;
pub mod pack;
pub mod quantize;
pub mod rollout;
pub mod run;
pub mod verify;

/// Prints a report as JSON or as text.
///
/// A closed stdout (`perch ... | head`) ends the output quietly instead of panicking.
pub fn print<T: serde::Serialize + std::fmt::Display>(
    report: &T,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let text = if json {
        serde_json::to_string_pretty(report)?
    } else {
        report.to_string()
    };
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
