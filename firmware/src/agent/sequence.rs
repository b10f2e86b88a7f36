//! Report sequence numbers that never repeat, leased on disk in blocks.

use std::io;
use std::path::{Path, PathBuf};

/// Sequence numbers reserved on disk at a time (see [`SeqState`]).
const SEQ_LEASE: u32 = 1024;
/// The agent's own state file in the spool folder.
const STATE_FILE: &str = "agent.state";

/// The boot count and the next report sequence number, kept in `agent.state` in the
/// spool folder so that sequence numbers keep increasing across restarts.
///
/// Writing the file for every report would wear a device's flash for nothing, so the
/// file reserves [`SEQ_LEASE`] numbers ahead: after a crash the sequence jumps to the
/// end of the lease (a gap receivers see, but never a repeated number); a clean
/// shutdown saves the exact next number.
#[derive(Debug)]
pub(crate) struct SeqState {
    path: PathBuf,
    /// Starts of the agent, this one included.
    pub(crate) boot_count: u32,
    next: u32,
    leased_to: u32,
}

impl SeqState {
    /// Reads the state in `dir` (starting over when there is none or it cannot be
    /// read), counts this boot and leases the first block.
    ///
    /// Never fails: a state file that cannot be written (a full disk, a read-only
    /// folder) is logged, and the agent runs with numbers leased in memory only (a
    /// crash may then repeat numbers of this run), rather than not at all.
    pub(crate) fn open(dir: &Path) -> SeqState {
        let path = dir.join(STATE_FILE);
        let (mut boot_count, mut next) = (0u32, 0u32);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    match line.split_once('=') {
                        Some(("boot_count", v)) => boot_count = v.trim().parse().unwrap_or(0),
                        Some(("next_seq", v)) => next = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot read {}: {e}; starting over", path.display()),
        }
        let mut state = SeqState {
            path,
            boot_count: boot_count.saturating_add(1),
            next,
            leased_to: next,
        };
        if let Err(e) = state.lease() {
            log::warn!(
                "cannot save the report sequence number in {}: {e}; numbering goes on \
                 in memory",
                state.path.display()
            );
        }
        state
    }

    /// The next sequence number, leasing another block when this one is used up.
    pub(crate) fn next(&mut self) -> u32 {
        if self.next == self.leased_to {
            if let Err(e) = self.lease() {
                log::warn!("cannot save the report sequence number: {e}");
            }
        }
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        seq
    }

    fn lease(&mut self) -> io::Result<()> {
        self.leased_to = self.next.wrapping_add(SEQ_LEASE);
        self.write(self.leased_to)
    }

    /// Saves the exact next number (a clean shutdown).
    pub(crate) fn save(&mut self) -> io::Result<()> {
        self.leased_to = self.next;
        self.write(self.next)
    }

    fn write(&self, next: u32) -> io::Result<()> {
        let text = format!("boot_count={}\nnext_seq={next}\n", self.boot_count);
        perch_runtime::fsio::write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_continue_across_restarts_and_never_repeat_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SeqState::open(dir.path());
        assert_eq!(state.boot_count, 1);
        assert_eq!((state.next(), state.next()), (0, 1));
        state.save().unwrap();
        let mut state = SeqState::open(dir.path());
        assert_eq!(state.boot_count, 2);
        assert_eq!(state.next(), 2);
        drop(state); // a crash: nothing saved
        let mut state = SeqState::open(dir.path());
        assert_eq!(state.boot_count, 3);
        assert!(state.next() > 2);
    }

    /// Issue 15: a full disk while leasing sequence numbers made perchd exit.
    #[test]
    fn a_state_file_that_cannot_be_written_does_not_stop_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: every write of it fails, as on a full
        // disk, whatever the user's permissions.
        std::fs::create_dir(dir.path().join(STATE_FILE)).unwrap();
        let mut state = SeqState::open(dir.path());
        assert_eq!(state.boot_count, 1);
        let seqs: Vec<u32> = (0..2 * SEQ_LEASE).map(|_| state.next()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "numbers keep increasing"
        );
        assert!(state.save().is_err());
    }
}
