//! This process: its memory, and how glibc's malloc serves its threads.

/// Resident set size of this process, from `/proc/self/status` (Linux only).
pub fn rss_kib() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Makes glibc's malloc use one arena for every thread, unless `MALLOC_ARENA_MAX` in the
/// environment says otherwise. Call first thing in `main`, before any thread starts.
///
/// glibc gives threads that allocate at once their own arenas (up to eight per core) and
/// keeps what is freed in each. Every inference allocates the model's activations and
/// frees them on whichever thread ran it (tokio's blocking threads for HTTP, the MQTT
/// thread, the sensor), so each of those arenas ends up holding a copy: serving R4
/// (MobileNetV2) over HTTP, 12–13 MiB of heap with the default against 10–11 MiB with
/// one arena, 36–44 against 33–35 MiB under four concurrent clients, at the same
/// throughput (BENCHMARKS.md). The cost is a lock on allocations larger than glibc's
/// per-thread cache (1 KiB), which inferences make a few hundred times each. A no-op
/// outside glibc.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and changes a malloc setting; it is safe to
        // call at any time (glibc takes its own lock).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
