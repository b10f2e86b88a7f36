//! An ONNX file up to the engine's own checks, as `Model::from_onnx_bytes` runs them
//! before tract parses the graph: the protobuf decoded with the engine's ONNX framework,
//! then `onnx_check::check` and `guards::check_onnx_dims`. Each refuses or accepts; tract's
//! graph parsing and optimization (which the guards protect) are not fuzzed here.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use perch_runtime::engine::internal::{guards, onnx_check, onnx_contrib};
use tract_onnx::prelude::Framework;

/// The engine's ONNX framework, with Perch's contrib operators registered.
static ONNX: LazyLock<tract_onnx::Onnx> = LazyLock::new(onnx_contrib::onnx_framework);

fuzz_target!(|data: &[u8]| {
    let onnx = &*ONNX;
    let Ok(proto) = onnx.proto_model_for_read(&mut &*data) else {
        return;
    };
    let _ = onnx_check::default_opset(&proto);
    let _ = onnx_check::check(&proto, &onnx.op_register);
    let _ = guards::check_onnx_dims(&proto);
});
