//! The binary (postcard) encoding of requests and replies, for MQTT payloads.
//!
//! Like the core's wire messages, every payload starts with a format byte,
//! [`FORMAT`] (1), followed by one postcard value and nothing else. Postcard writes
//! integers as varints (`u16`/`u32`/`u64`/`usize` as LEB128, signed ones zigzag first),
//! `f32` as 4 little-endian bytes, strings and sequences as a varint length then the
//! items, `Option` as 0 (none) or 1 then the value, and an enum as the varint index
//! of its variant then the variant's fields.
//!
//! A request is an [`InferRequest`]:
//!
//! ```text
//! InferRequest   = id: Option<String>, inputs: Vec<RequestTensor>
//! RequestTensor  = name: String, shape: Vec<usize>, data: TensorValues
//! TensorValues   = 0 F32(Vec<f32>) | 1 I64(Vec<i64>) | 2 I32(Vec<i32>)
//!                | 3 U8(Vec<u8>)   | 4 I8(Vec<i8>)
//! ```
//!
//! A reply is a [`BinaryReply`]:
//!
//! ```text
//! BinaryReply    = 0 Ok(InferResponse)
//!                | 1 Error { id: Option<String>, status: u16, reason: String }
//! InferResponse  = id: Option<String>, model_name: String, model_version: String,
//!                  outputs: Vec<ResponseTensor>
//! ResponseTensor = name: String, shape: Vec<usize>, data: TensorValues
//! ```
//!
//! `status` is the HTTP status the same error gets over HTTP (400, 404, 413, 500, 503).
//! For example the request `{id: "7", inputs: [{name: "x", shape: [2], data: F32([1.0,
//! 2.0])}]}` is `01 01 01 37 01 01 78 01 02 00 02 00 00 80 3f 00 00 00 40`.

use serde::{Deserialize, Serialize};

use super::message::{InferRequest, InferResponse, ServiceError};

/// The format byte every binary payload starts with.
pub const FORMAT: u8 = 1;

/// A decoded binary reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BinaryReply {
    /// The outputs.
    Ok(InferResponse),
    /// Why there are none.
    Error {
        /// The request's id, when it could be read from the request.
        id: Option<String>,
        /// The HTTP status the error gets over HTTP.
        status: u16,
        /// The reason, one line.
        reason: String,
    },
}

/// Decodes a binary request. A missing or unknown format byte, postcard that does not
/// decode, or trailing bytes are [`ServiceError::Malformed`].
pub fn decode_request(payload: &[u8]) -> Result<InferRequest, ServiceError> {
    decode(payload, "request")
}

/// Encodes a binary request (for clients and tests).
pub fn encode_request(request: &InferRequest) -> Vec<u8> {
    encode(request)
}

/// Encodes a successful reply.
pub fn encode_response(response: &InferResponse) -> Vec<u8> {
    encode(&Reply::Ok(response))
}

/// Encodes an error reply with the error's HTTP status and its reason.
pub fn encode_error(error: &ServiceError) -> Vec<u8> {
    encode(&Reply::Error {
        id: None,
        status: error.http_status(),
        reason: error.to_string(),
    })
}

/// Decodes a reply (for clients and tests).
pub fn decode_reply(payload: &[u8]) -> Result<BinaryReply, ServiceError> {
    decode(payload, "reply")
}

/// The borrowed twin of [`BinaryReply`], same layout, so encoding does not clone.
#[derive(Serialize)]
enum Reply<'a> {
    Ok(&'a InferResponse),
    Error {
        id: Option<String>,
        status: u16,
        reason: String,
    },
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing into a Vec fails only when memory does, which aborts anyway.
    postcard::to_extend(value, vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT])
}

fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8], what: &str) -> Result<T, ServiceError> {
    let (&format, rest) = payload
        .split_first()
        .ok_or_else(|| ServiceError::Malformed(format!("the binary {what} is empty")))?;
    if format != FORMAT {
        return Err(ServiceError::Malformed(format!(
            "the binary {what} has format byte {format}; this agent speaks format {FORMAT}"
        )));
    }
    let (value, trailing) = postcard::take_from_bytes::<T>(rest)
        .map_err(|e| ServiceError::Malformed(format!("the binary {what} does not decode: {e}")))?;
    if !trailing.is_empty() {
        return Err(ServiceError::Malformed(format!(
            "the binary {what} has {} trailing bytes",
            trailing.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{RequestTensor, ResponseTensor, TensorValues};

    fn example() -> InferRequest {
        InferRequest {
            id: Some("7".into()),
            inputs: vec![RequestTensor {
                name: "x".into(),
                shape: vec![2],
                data: TensorValues::F32(vec![1.0, 2.0]),
            }],
        }
    }

    #[test]
    fn the_documented_example_request_encodes_to_the_documented_bytes() {
        let bytes = encode_request(&example());
        assert_eq!(
            bytes,
            [
                0x01, 0x01, 0x01, 0x37, 0x01, 0x01, 0x78, 0x01, 0x02, 0x00, 0x02, 0x00, 0x00, 0x80,
                0x3f, 0x00, 0x00, 0x00, 0x40
            ]
        );
        assert_eq!(decode_request(&bytes).unwrap(), example());
    }

    #[test]
    fn every_element_type_round_trips() {
        for data in [
            TensorValues::F32(vec![f32::MIN, -0.0, f32::NAN.copysign(1.0), 3.5]),
            TensorValues::I64(vec![i64::MIN, -1, 0, i64::MAX]),
            TensorValues::I32(vec![i32::MIN, i32::MAX]),
            TensorValues::U8(vec![0, 255]),
            TensorValues::I8(vec![-128, 127]),
        ] {
            let request = InferRequest {
                id: None,
                inputs: vec![RequestTensor {
                    name: String::new(),
                    shape: vec![data.len()],
                    data: data.clone(),
                }],
            };
            let decoded = decode_request(&encode_request(&request)).unwrap();
            // NaN != NaN, so compare the encodings.
            assert_eq!(encode_request(&decoded), encode_request(&request));
        }
    }

    #[test]
    fn replies_round_trip_with_the_error_status() {
        let response = InferResponse {
            id: None,
            model_name: "m".into(),
            model_version: "1.0.0".into(),
            outputs: vec![ResponseTensor {
                name: "y".into(),
                shape: vec![1],
                data: TensorValues::U8(vec![9]),
            }],
        };
        assert_eq!(
            decode_reply(&encode_response(&response)).unwrap(),
            BinaryReply::Ok(response)
        );
        let error = ServiceError::PayloadTooLarge { size: 9, limit: 8 };
        assert_eq!(
            decode_reply(&encode_error(&error)).unwrap(),
            BinaryReply::Error {
                id: None,
                status: 413,
                reason: "the request is 9 bytes, over the limit of 8 bytes".into()
            }
        );
    }

    #[test]
    fn malformed_payloads_are_refused_with_the_reason() {
        let good = encode_request(&example());
        let mut unknown_variant = good.clone();
        unknown_variant[9] = 9;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: [(&[u8], &str); 5] = [
            (&[], "the binary request is empty"),
            (&[2, 0, 0], "has format byte 2; this agent speaks format 1"),
            (&good[..good.len() - 1], "does not decode"),
            (&unknown_variant, "does not decode"),
            (&trailing, "has 1 trailing bytes"),
        ];
        for (payload, reason) in cases {
            let err = decode_request(payload).unwrap_err();
            assert!(matches!(err, ServiceError::Malformed(_)));
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn a_hostile_length_prefix_fails_without_allocating_it() {
        // id: none, then an input count of u64::MAX as a varint.
        let payload = [
            1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(decode_request(&payload).is_err());
    }
}
