//! TCP ports for servers a test starts but cannot hand a listener to.
//!
//! A test that owns the server binds `127.0.0.1:0` and passes the listener, or lets the
//! process bind `:0` and reads the port it reports. mosquitto and rumqttd can do
//! neither: they bind the port their configuration names. Binding `:0`, dropping the
//! listener and handing the number on races with everything else on the machine that
//! binds or connects in the meantime, since the kernel hands out that range for both.
//!
//! A [`Port`] comes from below the kernel's ephemeral range, which outgoing connections
//! and `:0` never use, and is held by an exclusive lock on a file in the temporary
//! folder for as long as it lives, so test processes running at once (every test
//! binary of `cargo test`, several worktrees on one machine) never hand out the same
//! one.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports handed out start here (above the well-known and common service ports).
const FIRST: u16 = 20_000;

/// A port on 127.0.0.1 that no one else listens on, and that no other test gets while
/// this value lives (see the [module docs](self)).
#[derive(Debug)]
pub struct Port {
    port: u16,
    _lock: File,
}

impl Port {
    /// Reserves a port.
    ///
    /// # Panics
    ///
    /// The lock folder cannot be created or every port of the range is taken: a test
    /// cannot run without one.
    pub fn reserve() -> Port {
        let dir = lock_dir();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {} for port locks: {e}", dir.display());
        }
        let end = ephemeral_start().max(FIRST + 1_000);
        let span = u32::from(end - FIRST);
        let seed = std::process::id().wrapping_mul(7_919)
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for i in 0..span {
            let port = FIRST + ((seed.wrapping_add(i)) % span) as u16;
            let Ok(lock) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{port}.lock")))
            else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            // Something outside the tests may listen there.
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            return Port { port, _lock: lock };
        }
        panic!("no free port between {FIRST} and {end}");
    }

    /// The port number.
    pub fn get(&self) -> u16 {
        self.port
    }
}

/// Where the port locks live.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("perch-test-ports")
}

/// The first port of the kernel's ephemeral range (Linux's file; 32768, its default,
/// elsewhere).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_differ_while_held_and_are_free_to_bind() {
        let ports: Vec<Port> = (0..20).map(|_| Port::reserve()).collect();
        let mut numbers: Vec<u16> = ports.iter().map(Port::get).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), 20, "{numbers:?}");
        assert!(numbers
            .iter()
            .all(|&p| p >= FIRST && p < ephemeral_start().max(FIRST + 1_000)));
        for port in &ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port.get())).unwrap();
        }
    }
}
