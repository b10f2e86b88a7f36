//! Reading and writing the ONNX protobuf directly, for commands that rewrite graphs.
//!
//! The types are tract's prost-generated ones (`tract_onnx::pb`), so what the tools
//! write is read back by the engine with the same schema.

use std::path::Path;

use prost::Message;
pub use tract_onnx::pb;

use crate::ToolError;

/// Reads and decodes an ONNX model file; the error names the file and the reason.
pub fn read_model(path: &Path) -> Result<pb::ModelProto, ToolError> {
    let bytes = std::fs::read(path).map_err(|e| ToolError::read(path, e))?;
    decode_model(&bytes).map_err(|reason| ToolError::decode(path, "an ONNX model", reason))
}

/// Decodes ONNX bytes; refuses bytes that decode to a model without a graph.
pub fn decode_model(bytes: &[u8]) -> Result<pb::ModelProto, String> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    if model.graph.is_none() {
        return Err("it holds no graph".into());
    }
    Ok(model)
}

/// Encodes a model to bytes.
pub fn encode_model(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model atomically (see [`crate::fsio::write_atomic`]).
pub fn write_model(path: &Path, model: &pb::ModelProto) -> Result<(), ToolError> {
    crate::fsio::write_atomic(path, &encode_model(model)).map_err(|e| ToolError::write(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_survives_decode_and_encode_byte_for_byte_in_meaning() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kws-dscnn/model.onnx");
        let model = read_model(&path).unwrap();
        let again = decode_model(&encode_model(&model)).unwrap();
        assert_eq!(model, again);
    }

    #[test]
    fn bytes_that_are_not_onnx_are_refused() {
        assert!(decode_model(b"").is_err());
        assert!(decode_model(b"definitely not protobuf \xff\xff\xff").is_err());
    }
}
