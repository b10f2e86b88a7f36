//! `perch quantize`: int8 quantization of float ONNX models, checked on the engine.
//!
//! Measured on the engine as it is (tract 0.23.9), integer execution is slower than float
//! (on a MobileNetV3-style classifier QDQ ran 3.8× and QLinearConv 16× slower on x86):
//! only weight-only int8, whose `DequantizeLinear` on constant weights the engine folds at
//! load time, keeps float speed. Hence the modes:
//!
//! - [`Mode::Weights`] (the default): per-output-channel symmetric int8 weights, float
//!   activations: a 2.5–3× smaller file at float speed;
//! - [`Mode::Static`]: QDQ with activation ranges calibrated over a data set;
//! - [`Mode::Dynamic`]: ONNX Runtime's dynamic form (`DynamicQuantizeLinear`,
//!   `MatMulInteger`, `ConvInteger`);
//! - [`Mode::Auto`]: measure the candidates on this machine's engine and choose per
//!   layer (see [`auto`](self#auto-mode)).
//!
//! Graphs as exporters write them are first prepared as ONNX Runtime's `quant_pre_process`
//! does (`prepare.rs`): `Constant` weights become initializers, batch norms are folded into
//! their Conv for the integer modes, and opsets 11 and 12 become 13 for per-channel scales.
//!
//! Every output is loaded and run by the engine before it is written, and written
//! atomically. Inputs the engine refuses, already-quantized models and unreadable
//! files are refused before anything is written.
//!
//! # Auto mode
//!
//! 1. Each whole-model candidate (weights, dynamic, and static when calibration data is
//!    given) is built, checked on the engine, evaluated on the evaluation data and timed
//!    against the float model in interleaved runs.
//! 2. An integer precision (dynamic, static) is tried per layer only if its whole model
//!    ran at least 5% faster than float; otherwise it cannot pay for its accuracy loss
//!    on this engine, and the report gives its measured slowdown as the reason.
//! 3. Per-layer sensitivity: each layer is quantized alone (int8 weights, or an eligible
//!    integer precision) and evaluated against the float model. Layers whose loss alone
//!    exceeds the budget stay float; an integer precision is also kept only if the model
//!    with it ran at least 2% faster than without.
//! 4. The accepted layers are combined and the combination evaluated; while it exceeds
//!    the budget, the most sensitive accepted layer goes back to float.
//!
//! The budget is `--max-accuracy-drop` points of accuracy when the evaluation data has
//! labels; without labels, the same points of top-1 disagreement with the float model
//! for classification-shaped outputs, else `--max-output-error` (relative error
//! max|q − f| / max|f|).
//!
//! ```no_run
//! use perch_tools::quantize::{quantize, Mode, QuantizeRequest};
//!
//! let request = QuantizeRequest::new("models/digits-mlp/model.onnx", "digits.w8.onnx");
//! let report = quantize(&QuantizeRequest { mode: Mode::Weights, ..request })?;
//! println!("{report}");
//! # Ok::<(), perch_tools::ToolError>(())
//! ```

mod auto;
mod bench;
mod calibrate;
mod data;
mod evaluate;
mod graph;
mod math;
mod prepare;
mod report;
mod request;
mod rewrite;

use std::collections::BTreeMap;
use std::path::Path;

use perch_runtime::engine::internal::ArrayExt;
use perch_runtime::engine::{DType, Dim, LoadOptions, Model, TensorInfo};

pub use calibrate::Method;
pub use evaluate::Agreement;
pub use report::{Candidate, EvaluationData, FloatSummary, LayerReport, QuantizeReport};
pub use request::{Mode, QuantizeRequest};
pub use rewrite::Precision;

use crate::onnx::{decode_model, pb};
use crate::ToolError;
use bench::Bench;
use data::Dataset;
use rewrite::RewriteOptions;

/// Quantizes `request.model` and writes the result to `request.output`.
///
/// Refuses (with nothing written) models the engine refuses or cannot run, models that
/// are already quantized, models with nothing to quantize, and unusable data; and refuses
/// to write an output the engine cannot load and run.
pub fn quantize(request: &QuantizeRequest) -> Result<QuantizeReport, ToolError> {
    validate(request)?;
    let bytes = std::fs::read(&request.model).map_err(|e| ToolError::read(&request.model, e))?;
    if bytes.is_empty() {
        return Err(ToolError::decode(
            &request.model,
            "an ONNX model",
            "the file is empty (0 bytes)",
        ));
    }
    let float_model = Model::load(&request.model, &LoadOptions::new())?;
    let source = decode_model(&bytes)
        .map_err(|reason| ToolError::decode(&request.model, "an ONNX model", reason))?;
    let source_graph = source
        .graph
        .as_ref()
        .ok_or_else(|| ToolError::decode(&request.model, "an ONNX model", "it holds no graph"))?;
    if let Some(format) = quantization_format(source_graph) {
        return Err(ToolError::Model(format!(
            "the model is already quantized ({format}); quantize the float model it was made from"
        )));
    }
    let opset = graph::default_opset(&source);
    let mut notes = vec![];
    if opset < 10 {
        return Err(ToolError::Model(format!(
            "the model declares opset {opset}, older than DequantizeLinear (opset 10); re-export \
             it with opset 13 or later"
        )));
    }
    if request.mode == Mode::Dynamic && opset < 11 {
        return Err(ToolError::Model(format!(
            "--mode dynamic needs DynamicQuantizeLinear (opset 11); the model declares opset \
             {opset}. Re-export it with opset 13 or later, or use --mode weights"
        )));
    }
    // An exported graph as the quantizer needs it (prepare.rs): weights as initializers,
    // batch norms folded for the integer modes, opset 13 for per-channel scales.
    let source_opset = opset;
    let mut source = source;
    let mut preparation = vec![];
    let constants = prepare::constants_to_initializers(&mut source);
    if constants > 0 {
        preparation.push(format!(
            "{constants} Constant node{} became initializers",
            if constants == 1 { "" } else { "s" }
        ));
    }
    if request.mode != Mode::Weights {
        let folded = prepare::fold_batch_norms(&mut source);
        if !folded.is_empty() {
            let named = match folded.len() {
                n if n <= 4 => folded.join(", "),
                n => format!("{}, ... ({} more)", folded[..3].join(", "), n - 3),
            };
            preparation.push(format!(
                "{} BatchNormalization node{} folded into the Conv before {}: {named}",
                folded.len(),
                if folded.len() == 1 { "" } else { "s" },
                if folded.len() == 1 { "it" } else { "each" },
            ));
        }
    }
    let mut per_channel = request.per_channel && opset >= 13;
    if request.per_channel && opset < 13 {
        let ranks = crate::graph::typed_onnx(&source, &request.model, &[])
            .map(|typed| prepare::ranks(&typed))
            .unwrap_or_default();
        let mut converted = source.clone();
        match prepare::to_opset_13(&mut converted, &ranks) {
            Ok(changes) => {
                source = converted;
                per_channel = true;
                preparation.push(format!(
                    "opset {opset} converted to 13, where per-channel DequantizeLinear is defined{}",
                    if changes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", changes.join("; "))
                    }
                ));
            }
            Err(why) => notes.push(format!(
                "per-tensor weight scales: per-channel DequantizeLinear (axis, non-scalar \
                 scale) needs opset 13, and {why}"
            )),
        }
    }
    let opset = graph::default_opset(&source);
    let layers = rewrite::find_layers(&source);
    if !layers.iter().any(|l| l.keep_float.is_none()) {
        let why: Vec<String> = layers
            .iter()
            .filter_map(|l| l.keep_float.as_ref().map(|w| format!("{}: {w}", l.name)))
            .collect();
        return Err(ToolError::Model(format!(
            "nothing to quantize: no Conv, Gemm or MatMul with a constant float weight{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        )));
    }
    let input = match float_model.metadata().inputs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let needs_data = |what: &str| {
        ToolError::Model(format!(
            "{what} supports models with one float input; this one has {}",
            float_model.metadata().inputs.len()
        ))
    };
    // Data first: bad data is refused before anything is computed or written.
    let calibration = match (&request.calibration, request.mode) {
        (Some(path), Mode::Static | Mode::Auto) => {
            let input = input
                .as_ref()
                .ok_or_else(|| needs_data("calibration data"))?;
            Some(data::load(path, input, "calibration data")?)
        }
        (None, Mode::Static) => {
            return Err(ToolError::Usage(
                "--mode static needs calibration samples: pass --calibration DATA (.npy, .npz \
                 or a folder of them)"
                    .into(),
            ))
        }
        (Some(_), _) => {
            notes.push(format!(
                "--calibration is not used by --mode {}",
                request.mode
            ));
            None
        }
        (None, _) => None,
    };
    let (eval, held_out) = match (&request.eval, &input) {
        (Some(path), Some(input)) => (Some(data::load(path, input, "evaluation data")?), true),
        (Some(_), None) => return Err(needs_data("evaluation data")),
        (None, Some(input)) => match golden_data(&request.model, input) {
            Ok(golden) => (golden, false),
            Err(e) => {
                notes.push(format!(
                    "the golden input beside the model was not used: {e}"
                ));
                (None, false)
            }
        },
        (None, None) => (None, false),
    };
    match (&eval, held_out) {
        (None, _) => notes.push(
            "no evaluation data (no --eval, no golden/input_0.npy beside the model): outputs \
             were not compared with the float model"
                .into(),
        ),
        (Some(e), false) => notes.push(format!(
            "compared on {} ({} samples), not on held-out data: pass --eval DATA for a \
             meaningful accuracy figure",
            e.source,
            e.len()
        )),
        _ => {}
    }
    if request.mode == Mode::Auto && request.calibration.is_none() {
        notes.push("auto: static quantization not tried (it needs --calibration DATA)".into());
    }

    let reference_input = match &eval {
        Some(e) => (e.item_shape.clone(), e.data[..e.item_len()].to_vec()),
        None => zero_input(&float_model.metadata().inputs)?,
    };
    let float_outputs = eval
        .as_ref()
        .map(|e| evaluate::run_all(&float_model, e))
        .transpose()?;
    let float_accuracy = match (&float_outputs, &eval) {
        (Some(o), Some(e)) => evaluate::accuracy(o, e.labels.as_deref()),
        _ => None,
    };
    let ranges = match &calibration {
        Some(c) => {
            let mut tensors: Vec<String> = vec![];
            let nodes = source.graph.as_ref().map_or(&[][..], |g| g.node.as_slice());
            for l in layers.iter().filter(|l| l.keep_float.is_none()) {
                let x = &nodes[l.node].input[0];
                if !tensors.contains(x) {
                    tensors.push(x.clone());
                }
            }
            calibrate::ranges(&source, &tensors, c, request.method, request.percentile)?
        }
        None => Default::default(),
    };
    let bench = Bench {
        source: &source,
        layers: &layers,
        options: RewriteOptions {
            per_channel,
            ranges,
        },
        float_model: &float_model,
        float_size: bytes.len(),
        eval: eval.as_ref(),
        float_outputs: float_outputs.as_ref(),
        float_accuracy,
        reference_input,
    };

    let (chosen, candidates, auto_report) = match request.mode {
        Mode::Auto => {
            let outcome = auto::choose(&bench, request, calibration.is_some(), opset >= 11)?;
            (outcome.chosen, outcome.candidates, Some(outcome.report))
        }
        mode => {
            let precision = match mode {
                Mode::Static => Precision::Static,
                Mode::Dynamic => Precision::Dynamic,
                _ => Precision::Weights,
            };
            let trial = bench.build(mode, &vec![precision; layers.len()]);
            let candidate = bench.measure(&trial)?;
            if let Some(e) = &candidate.engine_error {
                return Err(ToolError::Refused {
                    path: request.output.clone(),
                    reason: format!("the engine cannot run the {mode}-quantized model: {e}"),
                });
            }
            (trial, vec![candidate], None)
        }
    };
    if chosen.quantized() == 0 {
        return Err(ToolError::Model(format!(
            "nothing was quantized ({}), so no output was written",
            chosen
                .applied
                .iter()
                .zip(&layers)
                .filter_map(|(a, l)| a.note.as_ref().map(|n| format!("{}: {n}", l.name)))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    crate::fsio::write_atomic(&request.output, &chosen.bytes)
        .map_err(|e| ToolError::write(&request.output, e))?;

    let mut candidates = candidates;
    for c in candidates.iter_mut() {
        c.written = c.mode == chosen.mode;
    }
    let reasons: BTreeMap<usize, String> = auto_report
        .as_ref()
        .map(|a| a.reasons())
        .unwrap_or_default();
    let layer_reports = layers
        .iter()
        .zip(&chosen.applied)
        .enumerate()
        .map(|(i, (l, a))| LayerReport {
            node: l.name.clone(),
            op: l.op.clone(),
            weight: l.weight.clone(),
            shape: l.dims.clone(),
            precision: a.precision,
            scales: a.scales,
            reason: reasons.get(&i).cloned().or_else(|| a.note.clone()),
        })
        .collect();
    Ok(QuantizeReport {
        model: request.model.display().to_string(),
        output: request.output.display().to_string(),
        mode: request.mode,
        opset,
        source_opset,
        preparation,
        per_channel,
        method: calibration.as_ref().map(|_| request.method),
        calibration_samples: calibration.as_ref().map(Dataset::len),
        evaluation: eval.as_ref().map(|e| EvaluationData {
            source: e.source.clone(),
            samples: e.len(),
            labelled: e.labels.is_some(),
            held_out,
        }),
        float: FloatSummary {
            size_bytes: bytes.len(),
            accuracy: float_accuracy,
        },
        candidates,
        layer_count: layers.len(),
        layers: layer_reports,
        auto: auto_report,
        notes,
    })
}

/// Refuses option values that cannot work, before any file is read.
fn validate(request: &QuantizeRequest) -> Result<(), ToolError> {
    if !(request.percentile > 0.0 && request.percentile <= 100.0) {
        return Err(ToolError::Usage(format!(
            "--percentile {} is not in (0, 100]",
            request.percentile
        )));
    }
    let negative = |v: f64| v.is_nan() || v < 0.0;
    if negative(request.max_accuracy_drop) || negative(request.max_output_error) {
        return Err(ToolError::Usage(
            "--max-accuracy-drop and --max-output-error must be zero or more".into(),
        ));
    }
    let same = match (request.model.canonicalize(), request.output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(ToolError::Usage(format!(
            "the output {} is the float model itself; write the quantized model elsewhere",
            request.output.display()
        )));
    }
    Ok(())
}

/// The golden input beside the model (and its labels, if any), as evaluation data.
fn golden_data(model: &Path, input: &TensorInfo) -> Result<Option<Dataset>, ToolError> {
    let dir = model.parent().unwrap_or(Path::new(".")).join("golden");
    let x = dir.join("input_0.npy");
    if !x.is_file() || input.dtype != DType::F32 {
        return Ok(None);
    }
    let mut set = data::load(&x, input, "golden input")?;
    let labels = dir.join("labels_0.npy");
    if labels.is_file() {
        let t = perch_runtime::engine::read_npy(&labels)?.into_tensor();
        let y: Option<Vec<i64>> = t.cast_to::<i64>().ok().and_then(|t| {
            t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<i64>().ok().map(<[i64]>::to_vec))
        });
        set.labels = y.filter(|y| y.len() == set.len());
    }
    Ok(Some(set))
}

/// A zero input for a single-f32-input model without data, to check the output runs.
fn zero_input(inputs: &[TensorInfo]) -> Result<(Vec<usize>, Vec<f32>), ToolError> {
    match inputs {
        [one] if one.dtype == DType::F32 => {
            let shape: Vec<usize> = one
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbolic(_) => 1,
                })
                .collect();
            let n = shape.iter().product();
            Ok((shape, vec![0.0; n]))
        }
        _ => Err(ToolError::Model(
            "only models with one float input can be checked on the engine before writing".into(),
        )),
    }
}

/// The quantization already present in a graph, described, if any.
fn quantization_format(graph: &pb::GraphProto) -> Option<String> {
    let count =
        |pred: &dyn Fn(&str) -> bool| graph.node.iter().filter(|n| pred(&n.op_type)).count();
    let qoperator = count(&|op| op.starts_with("QLinear"));
    let dynamic = count(&|op| {
        matches!(
            op,
            "DynamicQuantizeLinear" | "MatMulInteger" | "ConvInteger"
        )
    });
    let q = count(&|op| op == "QuantizeLinear");
    let dq = count(&|op| op == "DequantizeLinear");
    let inits: BTreeMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let per_channel = graph.node.iter().any(|n| {
        matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear")
            && (n.attribute.iter().any(|a| a.name == "axis")
                || n.input
                    .get(1)
                    .and_then(|s| inits.get(s.as_str()))
                    .is_some_and(|t| graph::element_count(t).is_some_and(|c| c > 1)))
    });
    let granularity = if per_channel {
        "per-channel"
    } else {
        "per-tensor"
    };
    if qoperator > 0 {
        Some(format!(
            "QOperator format: {qoperator} QLinear* integer operators"
        ))
    } else if dynamic > 0 {
        Some(format!(
            "dynamic quantization: {dynamic} DynamicQuantizeLinear/MatMulInteger/ConvInteger nodes"
        ))
    } else if q > 0 {
        Some(format!(
            "QDQ {granularity}: {q} QuantizeLinear and {dq} DequantizeLinear nodes"
        ))
    } else if dq > 0 {
        let on_constants = graph
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear")
            .all(|n| {
                n.input
                    .first()
                    .is_some_and(|x| inits.contains_key(x.as_str()))
            });
        Some(if on_constants {
            format!(
                "weight-only int8 {granularity}: {dq} DequantizeLinear node{} on constant weights",
                if dq == 1 { "" } else { "s" }
            )
        } else {
            format!("QDQ {granularity}: {dq} DequantizeLinear nodes")
        })
    } else {
        None
    }
}
