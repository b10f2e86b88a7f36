//! The rollout journal: what the operator saw over time, appended one JSON line per
//! save of the state (every few seconds while reports arrive, and at each decision).
//!
//! The state file holds the present (the current stage's window) and the decision log;
//! the journal keeps the past figures that `perch rollout report` plots. A group's
//! journal holds every rollout the group had, each line naming its rollout.
//!
//! A line is appended with one `write` and is not synced: a crash may lose the last
//! lines or cut the last one short. [`read`] ignores a last line cut short (no line
//! feed), and [`append`] removes it before writing, so the file stays readable; any
//! other line that is not a point is an error naming the line.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use perch_runtime::rollout::Phase;
use serde::{Deserialize, Serialize};

use super::cohort::CohortFigures;
use super::error::OperatorError;
use super::status::StatusReport;

/// One line of the journal: the rollout as the controller saw it at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalPoint {
    /// The rollout.
    pub rollout_id: String,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Controller time, milliseconds (soak time: it stands still while no operator
    /// runs).
    pub clock_ms: u64,
    /// The phase.
    pub phase: Phase,
    /// The current stage, 1-based.
    pub stage: usize,
    /// The current stage's cohort share, percent.
    pub percent: f64,
    /// The canary cohort over the current stage's window so far.
    pub canary: CohortFigures,
    /// The rest of the group over the same window.
    pub rest: CohortFigures,
    /// Devices per state, as in [`StatusReport::states`].
    pub states: BTreeMap<String, usize>,
}

impl JournalPoint {
    /// The point of `status` at controller time `clock_ms` and wall-clock `unix_ms`.
    pub fn of(status: &StatusReport, clock_ms: u64, unix_ms: u64) -> JournalPoint {
        JournalPoint {
            rollout_id: status.rollout_id.clone(),
            unix_ms,
            clock_ms,
            phase: status.phase,
            stage: status.stage,
            percent: status
                .stages
                .get(status.stage.saturating_sub(1))
                .map_or(0.0, |s| s.percent),
            canary: status.canary.clone(),
            rest: status.rest.clone(),
            states: status.states.clone(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OperatorError + '_ {
    move |source| OperatorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends `point` to the journal at `path`, creating it.
///
/// # Errors
///
/// The file cannot be opened or written.
pub fn append(path: &Path, point: &JournalPoint) -> Result<(), OperatorError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io(path))?;
    let end = file.seek(SeekFrom::End(0)).map_err(io(path))?;
    if end > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(io(path))?;
        file.read_exact(&mut last).map_err(io(path))?;
        if last[0] != b'\n' {
            // A line cut short by a crash: drop it (rare, so reading it all is fine).
            let mut text = Vec::new();
            file.seek(SeekFrom::Start(0)).map_err(io(path))?;
            file.read_to_end(&mut text).map_err(io(path))?;
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(io(path))?;
        }
    }
    let mut line = Vec::with_capacity(512);
    serde_json::to_writer(&mut line, point).map_err(|e| io(path)(e.into()))?;
    line.push(b'\n');
    file.write_all(&line).map_err(io(path))
}

/// The points of rollout `rollout_id` in the journal at `path`, oldest first; none
/// when the file does not exist. Points of other rollouts are skipped.
///
/// # Errors
///
/// The file cannot be read, or a line other than a last one cut short is not a point
/// ([`OperatorError::Journal`] names the line).
pub fn read(path: &Path, rollout_id: &str) -> Result<Vec<JournalPoint>, OperatorError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io(path)(source)),
    };
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let mut points = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<JournalPoint>(line) {
            Ok(point) if point.rollout_id == rollout_id => points.push(point),
            Ok(_) => {}
            // The last line has no line feed after it: a write cut short.
            Err(_) if i + 1 == lines.len() => {}
            Err(source) => {
                return Err(OperatorError::Journal {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rollout_id: &str, unix_ms: u64) -> JournalPoint {
        JournalPoint {
            rollout_id: rollout_id.into(),
            unix_ms,
            clock_ms: unix_ms - 1_000,
            phase: Phase::Running,
            stage: 1,
            percent: 10.0,
            canary: CohortFigures {
                devices: 2,
                requests: 100,
                ok: 99,
                errors: 1,
                device_seconds: 20.0,
                p50_ms: Some(1.5),
                p99_ms: Some(4.0),
                error_rate: Some(0.01),
                throughput: Some(4.95),
            },
            rest: CohortFigures::default(),
            states: BTreeMap::from([("active".to_string(), 2)]),
        }
    }

    #[test]
    fn points_round_trip_and_other_rollouts_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.journal");
        append(&path, &point("old", 1_000_000)).unwrap();
        append(&path, &point("new", 2_000_000)).unwrap();
        append(&path, &point("new", 2_005_000)).unwrap();
        assert_eq!(
            read(&path, "new").unwrap(),
            vec![point("new", 2_000_000), point("new", 2_005_000)]
        );
        assert!(read(&dir.path().join("none"), "new").unwrap().is_empty());
    }

    #[test]
    fn a_last_line_cut_short_is_ignored_and_dropped_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.journal");
        append(&path, &point("r", 1_000_000)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"rollout_id":"r","unix_"#).unwrap();
        assert_eq!(read(&path, "r").unwrap().len(), 1);
        append(&path, &point("r", 3_000_000)).unwrap();
        assert_eq!(
            read(&path, "r").unwrap(),
            vec![point("r", 1_000_000), point("r", 3_000_000)]
        );
    }

    #[test]
    fn a_damaged_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.journal");
        append(&path, &point("r", 1_000_000)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"not json\n").unwrap();
        append(&path, &point("r", 3_000_000)).unwrap();
        let err = read(&path, "r").unwrap_err().to_string();
        assert!(
            err.contains("g.journal line 2 is not a journal point"),
            "{err}"
        );
    }
}
