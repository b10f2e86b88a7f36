//! Which model a device runs: shared by several messages.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::codec::U16_MAX_LEN;
use crate::Error;

/// Capacity of [`ModelId::name`], in bytes of UTF-8.
pub const MAX_MODEL_NAME_LEN: usize = 32;

/// A model's semantic version.
///
/// Encoded as three varints, 3 to 9 bytes. Ordered by major, then minor, then patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Incremented for incompatible changes, e.g. to the inputs or outputs.
    pub major: u16,
    /// Incremented for backward-compatible additions.
    pub minor: u16,
    /// Incremented for backward-compatible fixes.
    pub patch: u16,
}

impl Version {
    /// `major.minor.patch`.
    pub const fn new(major: u16, minor: u16, patch: u16) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A model's name and version, e.g. `kws@1.2.3`.
///
/// Encoded as the name (varint length, then UTF-8) and the [`Version`]: at most
/// [`ModelId::MAX_ENCODED_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    /// The model's name, at most [`MAX_MODEL_NAME_LEN`] bytes.
    pub name: heapless::String<MAX_MODEL_NAME_LEN>,
    /// The model's version.
    pub version: Version,
}

impl ModelId {
    /// Worst-case encoded size: a one-byte length and 32 bytes of name, three 3-byte
    /// varints of version.
    pub const MAX_ENCODED_LEN: usize = 1 + MAX_MODEL_NAME_LEN + 3 * U16_MAX_LEN;

    /// A model id, copying `name`.
    ///
    /// # Errors
    ///
    /// [`Error::StringTooLong`] if `name` is longer than [`MAX_MODEL_NAME_LEN`] bytes.
    pub fn new(name: &str, version: Version) -> Result<ModelId, Error> {
        let too_long = Error::StringTooLong {
            field: "model name",
            max: MAX_MODEL_NAME_LEN,
            len: name.len(),
        };
        let name = heapless::String::try_from(name).map_err(|()| too_long)?;
        Ok(ModelId { name, version })
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_up_to_32_bytes_are_accepted() {
        let name = "a".repeat(32);
        let id = ModelId::new(&name, Version::new(1, 0, 0)).unwrap();
        assert_eq!(id.name, name.as_str());
    }

    #[test]
    fn names_over_32_bytes_are_rejected() {
        assert_eq!(
            ModelId::new(&"a".repeat(33), Version::new(1, 0, 0)),
            Err(Error::StringTooLong {
                field: "model name",
                max: 32,
                len: 33
            })
        );
    }

    #[test]
    fn model_ids_display_as_name_at_version() {
        let id = ModelId::new("kws", Version::new(1, 2, 3)).unwrap();
        assert_eq!(id.to_string(), "kws@1.2.3");
    }

    #[test]
    fn versions_order_by_major_then_minor_then_patch() {
        assert!(Version::new(1, 9, 9) < Version::new(2, 0, 0));
        assert!(Version::new(1, 2, 9) < Version::new(1, 3, 0));
        assert!(Version::new(1, 2, 3) < Version::new(1, 2, 4));
    }

    #[test]
    fn worst_case_model_id_encodes_to_exactly_max_encoded_len() {
        let id = ModelId::new(&"é".repeat(16), Version::new(u16::MAX, u16::MAX, u16::MAX)).unwrap();
        let mut buf = [0; 64];
        let bytes = postcard::to_slice(&id, &mut buf).unwrap();
        assert_eq!(bytes.len(), ModelId::MAX_ENCODED_LEN);
        assert_eq!(ModelId::MAX_ENCODED_LEN, 42);
    }
}
