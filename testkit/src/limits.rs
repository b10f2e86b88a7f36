//! The process's own limits, raised by the tests that need more than a shell's
//! defaults.

/// Raises this process's soft limit on open files to its hard limit (a 1,000-device
/// simulated fleet needs about 4,300), and returns the limit now in force; `None` where
/// it cannot be read. Children started afterwards inherit it.
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the rlimit passed by pointer,
    // which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(to_u64(limit.rlim_cur))
}

/// `rlim_t` is 64 bits on 64-bit Linux and 32 on 32-bit ARM.
#[allow(clippy::useless_conversion)]
fn to_u64(n: libc::rlim_t) -> u64 {
    u64::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_files().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(now, to_u64(limit.rlim_max));
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
