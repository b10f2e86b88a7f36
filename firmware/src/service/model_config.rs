//! The model configuration document (`GET /v2/models/{name}/config`), in the shape of
//! Triton's `ModelConfig` JSON so that `tritonclient`'s `get_model_config` and tools
//! reading Triton configurations understand it.
//!
//! A model whose inputs and outputs all start with the same symbolic (batch) dimension
//! is batched the Triton way: `max_batch_size` is the largest batch the service's
//! element limit lets through, and `dims` leave the batch dimension out. Otherwise
//! `max_batch_size` is 0 and `dims` are the full shape, `-1` for a symbolic dimension.

use perch_runtime::engine::{DType, Dim, Metadata, TensorInfo};
use perch_runtime::wire::ModelId;
use serde_json::json;

use super::oip::wire_dim;
use super::ServiceLimits;

/// Triton's name for an engine element type (`TYPE_FP32`, ...).
pub fn triton_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "TYPE_FP32",
        DType::F16 => "TYPE_FP16",
        DType::F64 => "TYPE_FP64",
        DType::I8 => "TYPE_INT8",
        DType::U8 => "TYPE_UINT8",
        DType::I16 => "TYPE_INT16",
        DType::I32 => "TYPE_INT32",
        DType::I64 => "TYPE_INT64",
        DType::Bool => "TYPE_BOOL",
        _ => "TYPE_INVALID",
    }
}

/// Whether every tensor's first dimension is symbolic: the model takes a batch.
fn batched(metadata: &Metadata) -> bool {
    metadata
        .inputs
        .iter()
        .chain(&metadata.outputs)
        .all(|t| matches!(t.shape.first(), Some(Dim::Symbolic(_))))
}

/// The largest batch whose inputs stay within `max_batch_elements`, at least 1.
fn max_batch_size(metadata: &Metadata, limits: &ServiceLimits) -> u64 {
    let per_item = metadata
        .inputs
        .iter()
        .map(|t| {
            t.shape.iter().skip(1).try_fold(1usize, |acc, d| match d {
                Dim::Fixed(n) => acc.checked_mul(*n),
                Dim::Symbolic(_) => None,
            })
        })
        .try_fold(0usize, |acc, n| acc.checked_add(n?));
    match per_item {
        Some(n) if n > 0 => u64::try_from(limits.max_batch_elements / n)
            .unwrap_or(u64::MAX)
            .max(1),
        _ => 1,
    }
}

/// The configuration document of the served model.
pub fn encode_model_config(id: &ModelId, metadata: &Metadata, limits: &ServiceLimits) -> Vec<u8> {
    let batched = batched(metadata);
    let tensors = |infos: &[TensorInfo]| -> Vec<serde_json::Value> {
        infos
            .iter()
            .map(|info| {
                let dims: Vec<i64> = info
                    .shape
                    .iter()
                    .skip(usize::from(batched))
                    .map(wire_dim)
                    .collect();
                json!({
                    "name": info.name,
                    "data_type": triton_type(info.dtype),
                    "dims": dims,
                })
            })
            .collect()
    };
    let body = json!({
        "name": id.name.as_str(),
        "platform": "perch-tract",
        "backend": "tract",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": if batched { max_batch_size(metadata, limits) } else { 0 },
        "input": tensors(&metadata.inputs),
        "output": tensors(&metadata.outputs),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
