//! The frame every wire message shares: a format byte first, then postcard.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The format version this build encodes and accepts: the first byte of every message.
pub const FORMAT_VERSION: u8 = 1;

/// Most bytes a `u16` takes as a postcard varint.
pub(super) const U16_MAX_LEN: usize = 3;

/// Most bytes a `u32` takes as a postcard varint.
pub(super) const U32_MAX_LEN: usize = 5;

/// The longest prefix of `text` that fits in `N` bytes, cut at a character boundary.
///
/// For filling fixed-capacity fields such as [`Health::last_error`](super::Health::last_error) from messages of
/// any length.
pub fn truncated<const N: usize>(text: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    // Cannot fail: the prefix is at most N bytes.
    let _ = out.push_str(&text[..text.floor_char_boundary(N)]);
    out
}

/// Checks that a message's format byte is [`FORMAT_VERSION`].
fn check_format(found: u8) -> Result<(), Error> {
    if found != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found,
            expected: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Encodes a message whose first field is the format byte `format`.
pub(super) fn encode<'b, T: Serialize>(
    format: u8,
    message: &T,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], Error> {
    check_format(format)?;
    postcard::to_slice(message, buf).map_err(|_| Error::Encode)
}

/// Decodes a message whose first field is the format byte, rejecting other formats
/// before reading further and rejecting trailing bytes.
pub(super) fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    check_format(*bytes.first().ok_or(Error::Decode)?)?;
    match postcard::take_from_bytes(bytes) {
        Ok((message, [])) => Ok(message),
        _ => Err(Error::Decode),
    }
}
