//! How large a bundle may be before it is refused unread.

/// Bounds on what [`Bundle::parse`](super::Bundle::parse) accepts, so a hostile or broken bundle cannot
/// exhaust a device's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest bundle, in bytes (default 256 MiB).
    pub max_bundle_bytes: u64,
    /// The largest `manifest.json`, in bytes (default 1 MiB).
    pub max_manifest_bytes: u64,
    /// The most entries in the archive (default 1024).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_bytes: 256 << 20,
            max_manifest_bytes: 1 << 20,
            max_entries: 1024,
        }
    }
}

impl Limits {
    /// The defaults: 256 MiB, a 1 MiB manifest, 1024 entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest bundle size in bytes.
    pub fn max_bundle_bytes(mut self, bytes: u64) -> Self {
        self.max_bundle_bytes = bytes;
        self
    }

    /// Sets the largest `manifest.json` size in bytes.
    pub fn max_manifest_bytes(mut self, bytes: u64) -> Self {
        self.max_manifest_bytes = bytes;
        self
    }

    /// Sets the largest number of archive entries.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }
}
