//! Reading an HTTP request body within a size limit, for the inference and repository
//! endpoints ([`crate::http`]).

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};

use crate::service::ServiceError;

/// How much of an oversize body is read and thrown away before answering 413.
///
/// Many clients (ureq, Python's requests) send the whole body before they read the
/// answer; a server that answers and closes early leaves them with a broken pipe
/// instead of the reason. Reading on costs time but no memory.
const DRAIN_BYTES: usize = 16 << 20;

/// Reads a body of at most `limit` bytes. A larger one is
/// [`ServiceError::PayloadTooLarge`], after reading up to [`DRAIN_BYTES`] more of it
/// (none if its declared length is already beyond that).
pub async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
) -> Result<Vec<u8>, ServiceError> {
    let drain_limit = limit.saturating_add(DRAIN_BYTES);
    if let Some(size) = declared.filter(|n| *n > drain_limit) {
        return Err(ServiceError::PayloadTooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut size = 0usize;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame
            .map_err(|e| ServiceError::Malformed(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size = size.saturating_add(data.len());
        if size <= limit {
            bytes.extend_from_slice(&data);
        } else if size > drain_limit {
            break;
        }
    }
    if size > limit {
        return Err(ServiceError::PayloadTooLarge {
            size: declared.unwrap_or(size).max(size),
            limit,
        });
    }
    Ok(bytes)
}
