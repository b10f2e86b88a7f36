//! The one `.npy` reader: a strict header parser and a decoder that allocates only what
//! the file holds.
//!
//! A `.npy` file is `\x93NUMPY`, a version (1.0, 2.0 or 3.0), the header's length
//! (`u16` little-endian for 1.0, `u32` for 2.0 and 3.0), the header, then the data. The
//! header is a Python dict literal with exactly three keys:
//!
//! ```text
//! {'descr': '<f4', 'fortran_order': False, 'shape': (1, 12), }
//! ```
//!
//! Golden files travel inside bundles, so a header is untrusted input. [`parse_header`]
//! refuses anything that is not that dict: a key given twice (one reader taking the
//! first `shape` and another the last is how a 4-byte file asked for a terabyte), an
//! unknown or missing key, a dimension that does not fit, more than [`MAX_RANK`]
//! dimensions, a header over [`MAX_HEADER_BYTES`]. [`decode`] then requires the data
//! to be exactly `product(shape) × element size` bytes, so the one allocation it makes
//! is never larger than the file.

use tract_core::ndarray::{ArrayD, IxDyn, ShapeBuilder};
use tract_core::prelude::{Datum, Tensor};

/// The longest header accepted, in bytes (NumPy itself reads at most 10 000 by default).
pub const MAX_HEADER_BYTES: usize = 65_535;
/// The most dimensions accepted (NumPy's own limit is 64; tensors here have a handful).
pub const MAX_RANK: usize = 32;

/// An element type the reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    /// `<f4`
    F32,
    /// `<f8`
    F64,
    /// `<i8`
    I64,
    /// `<i4`
    I32,
    /// `|i1`
    I8,
    /// `|u1`
    U8,
}

impl NpyDType {
    /// The element size in bytes.
    pub fn size(self) -> usize {
        match self {
            NpyDType::F64 | NpyDType::I64 => 8,
            NpyDType::F32 | NpyDType::I32 => 4,
            NpyDType::I8 | NpyDType::U8 => 1,
        }
    }

    fn from_descr(descr: &str) -> Result<NpyDType, String> {
        let (order, kind) = descr.split_at(descr.len().min(1));
        let dtype = match kind {
            "f4" => NpyDType::F32,
            "f8" => NpyDType::F64,
            "i8" => NpyDType::I64,
            "i4" => NpyDType::I32,
            "i1" => NpyDType::I8,
            "u1" => NpyDType::U8,
            _ => {
                return Err(format!(
                    "unsupported element type {descr:?} (expected f32, f64, i64, i32, i8 or u8)"
                ))
            }
        };
        let order_ok = match order {
            "<" => true,
            "|" | "=" => dtype.size() == 1,
            _ => false,
        };
        if !order_ok {
            return Err(format!(
                "unsupported byte order in {descr:?} (little-endian only)"
            ));
        }
        Ok(dtype)
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type.
    pub dtype: NpyDType,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Where the data starts in the file.
    pub data_offset: usize,
    /// The data's length in bytes, as the shape and element type declare it.
    pub data_bytes: usize,
}

/// Parses the header of the `.npy` file `bytes` (see the [module docs](self)).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    let not_npy = || "not an .npy file (bad magic or version)".to_string();
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(not_npy());
    }
    let (len, start) = match (bytes[6], bytes[7]) {
        (1, 0) => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        (2 | 3, 0) if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        _ => return Err(not_npy()),
    };
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "the .npy header is {len} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ));
    }
    let end = start + len;
    let header = bytes
        .get(start..end)
        .ok_or_else(|| "the .npy file ends inside its header".to_string())?;
    let header = std::str::from_utf8(header)
        .ok()
        .filter(|h| h.is_ascii())
        .ok_or_else(|| "the .npy header is not ASCII".to_string())?;
    let dict = Dict::parse(header)?;
    let dtype = NpyDType::from_descr(&dict.descr)?;
    if dict.shape.len() > MAX_RANK {
        return Err(format!(
            "the .npy shape has {} dimensions; at most {MAX_RANK} are accepted",
            dict.shape.len()
        ));
    }
    let elements = dict
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("the .npy shape {:?} overflows", dict.shape))?;
    let data_bytes = elements
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("the .npy shape {:?} overflows", dict.shape))?;
    Ok(NpyHeader {
        dtype,
        fortran_order: dict.fortran_order,
        shape: dict.shape,
        data_offset: end,
        data_bytes,
    })
}

/// Decodes a `.npy` file held in memory into a tensor (f32, f64, i64, i32, i8 or u8,
/// little-endian, C or Fortran order).
///
/// # Errors
///
/// The header is refused ([`parse_header`]) or the data is not exactly the size the
/// header declares.
pub fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    let header = parse_header(bytes)?;
    let data = &bytes[header.data_offset..];
    if data.len() != header.data_bytes {
        let elements = header.data_bytes / header.dtype.size();
        return Err(format!(
            "its header declares {elements} elements ({} bytes) but {} bytes of data follow",
            header.data_bytes,
            data.len()
        ));
    }
    match header.dtype {
        NpyDType::F32 => tensor(&header, data, f32::from_le_bytes),
        NpyDType::F64 => tensor(&header, data, f64::from_le_bytes),
        NpyDType::I64 => tensor(&header, data, i64::from_le_bytes),
        NpyDType::I32 => tensor(&header, data, i32::from_le_bytes),
        NpyDType::I8 => tensor(&header, data, i8::from_le_bytes),
        NpyDType::U8 => tensor(&header, data, u8::from_le_bytes),
    }
}

fn tensor<T: Datum, const N: usize>(
    header: &NpyHeader,
    data: &[u8],
    from: fn([u8; N]) -> T,
) -> Result<Tensor, String> {
    let values: Vec<T> = data
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            from(b)
        })
        .collect();
    let shape = IxDyn(&header.shape);
    let array = if header.fortran_order {
        ArrayD::from_shape_vec(shape.f(), values).map(|a| a.as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(shape, values)
    };
    array
        .map(Tensor::from)
        .map_err(|e| format!("the data does not fit the shape: {e}"))
}

/// The three keys of a header, each seen exactly once.
struct Dict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Dict {
    fn parse(text: &str) -> Result<Dict, String> {
        let mut p = Parser { rest: text };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        p.expect('{')?;
        loop {
            if p.eat('}') {
                break;
            }
            let key = p.string()?;
            p.expect(':')?;
            let duplicate = match key.as_str() {
                "descr" => descr.replace(p.string()?).is_some(),
                "fortran_order" => fortran_order.replace(p.boolean()?).is_some(),
                "shape" => shape.replace(p.tuple()?).is_some(),
                other => return Err(format!("the .npy header has an unknown key {other:?}")),
            };
            if duplicate {
                return Err(format!("the .npy header gives {key:?} twice"));
            }
            if !p.eat(',') {
                p.expect('}')?;
                break;
            }
        }
        if !p.rest.trim_matches([' ', '\n']).is_empty() {
            return Err("the .npy header has text after its dict".into());
        }
        let missing = |key: &str| format!("the .npy header has no {key:?}");
        Ok(Dict {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

/// A cursor over a header's text.
struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start_matches(' ');
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed .npy header: expected {c:?}"))
        }
    }

    /// A string in single or double quotes, without escapes.
    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let quote = self
            .rest
            .chars()
            .next()
            .filter(|q| *q == '\'' || *q == '"')
            .ok_or_else(|| "malformed .npy header: expected a string".to_string())?;
        let body = &self.rest[1..];
        let end = body
            .find(quote)
            .filter(|&end| !body[..end].contains('\\'))
            .ok_or_else(|| "malformed .npy header: an unterminated string".to_string())?;
        let value = body[..end].to_string();
        self.rest = &body[end + 1..];
        Ok(value)
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_space();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err("malformed .npy header: fortran_order is not True or False".into())
    }

    /// `()`, `(n,)`, `(a, b)` or `(a, b,)` of non-negative integers. `(n)` is the
    /// integer `n` in Python, not a tuple, and is refused.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        let mut comma = false;
        loop {
            if self.eat(')') {
                break;
            }
            self.skip_space();
            let digits = self.rest.len()
                - self
                    .rest
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits == 0 {
                return Err("malformed .npy header: a dimension is not a number".into());
            }
            let text = &self.rest[..digits];
            let dim = text
                .parse::<usize>()
                .map_err(|_| format!("the .npy dimension {text} is too large"))?;
            self.rest = &self.rest[digits..];
            if dims.len() == MAX_RANK {
                return Err(format!(
                    "the .npy shape has more than {MAX_RANK} dimensions"
                ));
            }
            dims.push(dim);
            comma = self.eat(',');
            if !comma {
                self.expect(')')?;
                break;
            }
        }
        if dims.len() == 1 && !comma {
            return Err("malformed .npy header: a shape of one dimension needs its comma".into());
        }
        Ok(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        // Padded as NumPy pads: the data starts at a multiple of 64.
        let mut text = header.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn a_numpy_written_file_decodes() {
        // The reference models' golden files are NumPy's own output.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/kws-dscnn/golden/output_0.npy"
        );
        let bytes = std::fs::read(path).unwrap();
        let header = parse_header(&bytes).unwrap();
        assert_eq!(
            (header.dtype, header.shape.as_slice()),
            (NpyDType::F32, &[1, 12][..])
        );
        let t = decode(&bytes).unwrap();
        assert_eq!(t.shape(), &[1, 12]);
    }

    #[test]
    fn every_element_type_and_a_scalar_decode() {
        let t = decode(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[0, 0, 128, 63, 0, 0, 0, 64],
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
            &[1.0, 2.0]
        );
        let t = decode(&npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
            &7i64.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(t.shape(), &[] as &[usize]);
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap(),
            &[7]
        );
        let t = decode(&npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3), }",
            &[1, 2, 3],
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap(),
            &[1, 2, 3]
        );
        let t = decode(&npy(
            "{'descr': '|i1', 'fortran_order': False, 'shape': (1,), }",
            &[0xff],
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<i8>().unwrap(),
            &[-1]
        );
        let t = decode(&npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
            &(-3i32).to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<i32>().unwrap(),
            &[-3]
        );
        let t = decode(&npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            &0.5f64.to_le_bytes(),
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<f64>().unwrap(),
            &[0.5]
        );
    }

    #[test]
    fn fortran_order_is_read_into_c_order() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        let data: Vec<u8> = [1u8, 4, 2, 5, 3, 6].to_vec();
        let t = decode(&npy(
            "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        ))
        .unwrap();
        assert_eq!(
            t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap(),
            &[1, 2, 3, 4, 5, 6]
        );
    }

    /// Regression (issue 15): the old check read the first `shape`, ndarray-npy the
    /// last, so this 4-byte file made every reader of bundles allocate 4 TB and abort.
    #[test]
    fn a_header_giving_shape_twice_is_refused() {
        let bytes = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (1000000000000,), }",
            &[0; 4],
        );
        let err = decode(&bytes).unwrap_err();
        assert!(err.contains("\"shape\" twice"), "{err}");
        for dup in [
            "{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'fortran_order': True, 'shape': (1,), }",
        ] {
            assert!(
                decode(&npy(dup, &[0; 4])).unwrap_err().contains("twice"),
                "{dup}"
            );
        }
    }

    #[test]
    fn sizes_beyond_the_data_or_the_limits_are_refused_without_allocating() {
        for (header, needle) in [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
                "1000000000000 elements",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }",
                "overflows",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                "overflows",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
                "too large",
            ),
        ] {
            let err = decode(&npy(header, &[0; 4])).unwrap_err();
            assert!(err.contains(needle), "{header}: {err}");
        }
        let deep = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
            "1, ".repeat(40)
        );
        assert!(decode(&npy(&deep, &[0; 4]))
            .unwrap_err()
            .contains("dimensions"));
        // Trailing bytes are as wrong as missing ones.
        let err = decode(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        ))
        .unwrap_err();
        assert!(err.contains("8 bytes of data"), "{err}");
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("at most"));
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        for (header, needle) in [
            ("{'descr': '<f4', 'fortran_order': False, }", "no \"shape\""),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1, }",
                "unknown key",
            ),
            (
                "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                "byte order",
            ),
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
                "unsupported element type",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }",
                "True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
                "not a number",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1), }",
                "needs its comma",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,) } junk",
                "after its dict",
            ),
            (
                "{'descr: '<f4', 'fortran_order': False, 'shape': (1,), }",
                "malformed",
            ),
        ] {
            let err = decode(&npy(header, &[0; 4])).unwrap_err();
            assert!(err.contains(needle), "{header}: {err}");
        }
        assert!(decode(b"\x93NUMPY\x09\x00\x00\x00")
            .unwrap_err()
            .contains("not an .npy"));
        assert!(decode(b"PK\x03\x04").unwrap_err().contains("not an .npy"));
        let mut cut = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        cut.truncate(20);
        assert!(decode(&cut).unwrap_err().contains("inside its header"));
    }
}
