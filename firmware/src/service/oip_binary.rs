//! The Open Inference Protocol's binary tensor data extension, as Triton defines it and
//! `tritonclient` uses it by default.
//!
//! A request body is a JSON header ([`super::oip`]) of `Inference-Header-Content-Length`
//! bytes, then the raw elements of every input whose JSON says
//! `"parameters": {"binary_data_size": <bytes>}`, one after the other in the order of
//! the inputs. Elements are row-major and little-endian, one byte per `UINT8`/`INT8`
//! element; `binary_data_size` must be exactly the shape's element count times the
//! element size. A response with binary outputs has the same layout, and the
//! header's length in its own `Inference-Header-Content-Length`.
//!
//! Every size a client declares is checked before it is used: a header length longer
//! than the body, a tensor that claims more bytes than follow, bytes left over, or a
//! size that disagrees with the shape and datatype are each a
//! [`ServiceError::Malformed`] naming the problem. Nothing is allocated beyond the
//! body already read.
//!
//! ```
//! use perch_firmware::service::oip_binary::split;
//!
//! let body = b"{\"inputs\":[]}\x00\x00\x80\x3f";
//! let (header, tail) = split(body, Some("13")).unwrap();
//! assert_eq!((header.len(), tail), (13, &[0u8, 0, 0x80, 0x3f][..]));
//! assert!(split(body, Some("99")).is_err());
//! ```

use super::message::{ServiceError, TensorValues};

/// The header that gives the JSON part's length, in a request or a response.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// Splits a body at the JSON header's length: the whole body is JSON when the header
/// is absent. A length that is not a decimal byte count, or is longer than the body,
/// is refused.
pub fn split<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), ServiceError> {
    let Some(value) = header_length else {
        return Ok((body, &[]));
    };
    let length: usize = value.trim().parse().map_err(|_| {
        ServiceError::Malformed(format!("{HEADER_LENGTH} is {value:?}, not a byte count"))
    })?;
    if length > body.len() {
        return Err(ServiceError::Malformed(format!(
            "{HEADER_LENGTH} is {length} but the body is only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

/// The binary part of a request, handed out to the inputs in order.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(binary: &'a [u8]) -> Cursor<'a> {
        Cursor {
            rest: binary,
            offset: 0,
        }
    }

    /// The next `size` bytes, for input `name`.
    pub(crate) fn take(&mut self, name: &str, size: u64) -> Result<&'a [u8], ServiceError> {
        let available = self.rest.len();
        let fits = usize::try_from(size).ok().filter(|n| *n <= available);
        let Some(size) = fits else {
            return Err(ServiceError::Malformed(format!(
                "input {name:?} declares binary_data_size {size} at offset {} of the binary \
                 data, but only {available} bytes follow",
                self.offset
            )));
        };
        let (taken, rest) = self.rest.split_at(size);
        self.rest = rest;
        self.offset += size;
        Ok(taken)
    }

    /// Checks that the inputs claimed every byte.
    pub(crate) fn finish(self) -> Result<(), ServiceError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::Malformed(format!(
                "{} bytes of binary data follow the {} the inputs declare \
                 (parameters.binary_data_size)",
                self.rest.len(),
                self.offset
            )))
        }
    }
}

/// The size in bytes of one element of an OIP datatype this server takes, or `None`.
fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "FP32" | "INT32" => 4,
        "INT64" => 8,
        "UINT8" | "INT8" => 1,
        _ => return None,
    })
}

/// Reads the raw little-endian elements of input `name` after checking that `bytes`
/// holds exactly the elements `shape` and `datatype` call for.
pub(crate) fn read_tensor(
    name: &str,
    datatype: &str,
    shape: &[usize],
    bytes: &[u8],
) -> Result<TensorValues, ServiceError> {
    let Some(size) = element_size(datatype) else {
        return Err(ServiceError::Malformed(format!(
            "input {name:?} has datatype {datatype:?}, which this server does not take as \
             binary data; use FP32, INT64, INT32, UINT8 or INT8"
        )));
    };
    let expected = shape
        .iter()
        .try_fold(size, |acc, n| acc.checked_mul(*n))
        .filter(|n| *n == bytes.len());
    if expected.is_none() {
        return Err(ServiceError::Malformed(format!(
            "input {name:?} is {datatype} of shape {shape:?}, which is not the {} bytes of \
             its binary_data_size",
            bytes.len()
        )));
    }
    Ok(match datatype {
        "FP32" => TensorValues::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "INT32" => TensorValues::I32(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "INT64" => TensorValues::I64(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        "UINT8" => TensorValues::U8(bytes.to_vec()),
        _ => TensorValues::I8(bytes.iter().map(|b| i8::from_le_bytes([*b])).collect()),
    })
}

/// Appends `data`'s elements, little-endian, to `out`.
pub(crate) fn write_tensor(data: &TensorValues, out: &mut Vec<u8>) {
    match data {
        TensorValues::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        TensorValues::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        TensorValues::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        TensorValues::U8(v) => out.extend_from_slice(v),
        TensorValues::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::oip::{decode_parts, encode_response_parts};
    use super::*;
    use crate::service::{InferResponse, ResponseTensor};

    fn header(inputs: &str) -> Vec<u8> {
        format!(r#"{{"inputs":[{inputs}]}}"#).into_bytes()
    }

    fn binary_input(name: &str, datatype: &str, shape: &str, size: u64) -> String {
        format!(
            r#"{{"name":"{name}","shape":{shape},"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}"#
        )
    }

    fn error(header: &[u8], binary: &[u8]) -> String {
        let e = decode_parts(header, binary).unwrap_err();
        assert!(matches!(e, ServiceError::Malformed(_)), "{e:?}");
        e.to_string()
    }

    #[test]
    fn every_datatype_reads_little_endian_from_the_binary_part() {
        let cases: [(&str, Vec<u8>, TensorValues); 5] = [
            (
                "FP32",
                [1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat(),
                TensorValues::F32(vec![1.5, -2.0]),
            ),
            (
                "INT64",
                [7i64.to_le_bytes(), (-1i64).to_le_bytes()].concat(),
                TensorValues::I64(vec![7, -1]),
            ),
            (
                "INT32",
                [(-3i32).to_le_bytes(), 65536i32.to_le_bytes()].concat(),
                TensorValues::I32(vec![-3, 65536]),
            ),
            ("UINT8", vec![0, 255], TensorValues::U8(vec![0, 255])),
            ("INT8", vec![0x80, 0x7f], TensorValues::I8(vec![-128, 127])),
        ];
        for (datatype, bytes, want) in cases {
            let json = header(&binary_input("x", datatype, "[2]", bytes.len() as u64));
            let request = decode_parts(&json, &bytes).unwrap();
            assert_eq!(request.request.inputs[0].data, want, "{datatype}");
            let mut written = Vec::new();
            write_tensor(&want, &mut written);
            assert_eq!(written, bytes, "{datatype} writes back the same bytes");
        }
    }

    #[test]
    fn binary_and_json_inputs_mix_and_take_their_bytes_in_order() {
        let json = header(&format!(
            r#"{},{{"name":"b","shape":[1],"datatype":"INT32","data":[9]}},{}"#,
            binary_input("a", "UINT8", "[2]", 2),
            binary_input("c", "INT8", "[1]", 1)
        ));
        let request = decode_parts(&json, &[1, 2, 0xff]).unwrap().request;
        let data: Vec<_> = request.inputs.iter().map(|t| t.data.clone()).collect();
        assert_eq!(
            data,
            [
                TensorValues::U8(vec![1, 2]),
                TensorValues::I32(vec![9]),
                TensorValues::I8(vec![-1])
            ]
        );
    }

    #[test]
    fn sizes_that_disagree_with_the_body_shape_or_datatype_are_named() {
        let fp32 = |size| header(&binary_input("x", "FP32", "[2,2]", size));
        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (
                fp32(16),
                vec![0; 12],
                "input \"x\" declares binary_data_size 16 at offset 0 of the binary data, \
                 but only 12 bytes follow",
            ),
            (
                fp32(12),
                vec![0; 12],
                "input \"x\" is FP32 of shape [2, 2], which is not the 12 bytes of its \
                 binary_data_size",
            ),
            (
                fp32(16),
                vec![0; 20],
                "4 bytes of binary data follow the 16 the inputs declare",
            ),
            (
                fp32(u64::MAX),
                vec![0; 16],
                "declares binary_data_size 18446744073709551615 at offset 0",
            ),
            (
                header(&binary_input("x", "FP32", "[4611686018427387904,4]", 16)),
                vec![0; 16],
                "is FP32 of shape [4611686018427387904, 4], which is not the 16 bytes",
            ),
            (
                header(&binary_input("x", "FP16", "[2]", 4)),
                vec![0; 4],
                "datatype \"FP16\", which this server does not take as binary data",
            ),
            (
                header(
                    r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}"#,
                ),
                vec![0; 4],
                "input \"x\" has both data and parameters.binary_data_size",
            ),
            (
                header(
                    r#"{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-4}}"#,
                ),
                vec![0; 4],
                "invalid request: invalid value: integer `-4`, expected u64",
            ),
            (
                header(
                    r#"{"name":"x","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":"r"}}"#,
                ),
                vec![],
                "names a shared memory region",
            ),
        ];
        for (i, (json, binary, reason)) in cases.iter().enumerate() {
            let got = error(json, binary);
            assert!(got.contains(reason), "case {i}: {got}");
        }
    }

    #[test]
    fn a_header_length_that_is_not_a_count_or_exceeds_the_body_is_refused() {
        let body = b"{}abc";
        assert_eq!(split(body, None).unwrap(), (&body[..], &[][..]));
        assert_eq!(split(body, Some("2")).unwrap(), (&b"{}"[..], &b"abc"[..]));
        assert_eq!(split(body, Some("5")).unwrap().1, b"");
        let cases = [
            (
                "6",
                "Inference-Header-Content-Length is 6 but the body is only 5 bytes",
            ),
            (
                "-1",
                "Inference-Header-Content-Length is \"-1\", not a byte count",
            ),
            (
                "0x10",
                "Inference-Header-Content-Length is \"0x10\", not a byte count",
            ),
            (
                "99999999999999999999999",
                "Inference-Header-Content-Length is \"99999999999999999999999\", not a byte count",
            ),
        ];
        for (value, reason) in cases {
            assert_eq!(split(body, Some(value)).unwrap_err().to_string(), reason);
        }
    }

    #[test]
    fn requested_outputs_and_the_binary_default_are_read() {
        let json = br#"{"inputs":[],"parameters":{"binary_data_output":true,"priority":1},
            "outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"}]}"#;
        let request = decode_parts(json, &[]).unwrap();
        assert!(request.binary_data_output);
        let outputs = request.outputs.unwrap();
        assert_eq!(
            outputs
                .iter()
                .map(|o| (o.name.as_str(), o.binary_data))
                .collect::<Vec<_>>(),
            [("y", Some(false)), ("z", None)]
        );
        let err = error(
            br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#,
            &[],
        );
        assert!(err.contains("asks for classification"), "{err}");
    }

    /// The wire bytes of a response with one binary and one JSON output, so the
    /// layout cannot drift.
    #[test]
    fn a_response_puts_binary_outputs_after_the_header_in_order() {
        let response = InferResponse {
            id: Some("r".into()),
            model_name: "m".into(),
            model_version: "1.0.0".into(),
            outputs: vec![
                ResponseTensor {
                    name: "y".into(),
                    shape: vec![2],
                    data: TensorValues::F32(vec![1.0, -0.5]),
                },
                ResponseTensor {
                    name: "k".into(),
                    shape: vec![1],
                    data: TensorValues::I64(vec![3]),
                },
            ],
        };
        let (body, length) = encode_response_parts(&response, &[true, false]);
        let header = br#"{"model_name":"m","model_version":"1.0.0","id":"r","outputs":[{"name":"y","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"k","shape":[1],"datatype":"INT64","data":[3]}]}"#;
        assert_eq!(length, Some(header.len()));
        assert_eq!(&body[..header.len()], header);
        assert_eq!(&body[header.len()..], [0, 0, 0x80, 0x3f, 0, 0, 0, 0xbf]);
        let (json_only, length) = encode_response_parts(&response, &[false, false]);
        assert_eq!(length, None);
        assert_eq!(json_only, crate::service::oip::encode_response(&response));
    }
}
