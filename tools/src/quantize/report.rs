//! What `perch quantize` reports: the float model's figures, every candidate built and
//! measured, each layer's fate, and the text form of all of it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::calibrate::Method;
use super::evaluate::Agreement;
use super::request::Mode;
use super::rewrite::Precision;

/// Where the comparison data came from.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationData {
    /// The file or folder.
    pub source: String,
    /// Number of samples.
    pub samples: usize,
    /// Whether it has labels (`y`).
    pub labelled: bool,
    /// False when it is the golden input beside the model rather than held-out data.
    pub held_out: bool,
}

/// The float model's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloatSummary {
    /// File size in bytes.
    pub size_bytes: usize,
    /// Accuracy against the labels, when there are labels.
    pub accuracy: Option<f64>,
}

/// One quantized model that was built and measured.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The mode that produced it.
    pub mode: Mode,
    /// Whether it is the model written to the output path.
    pub written: bool,
    /// Why the engine could not load or run it (then nothing else was measured).
    pub engine_error: Option<String>,
    /// Encoded size in bytes.
    pub size_bytes: usize,
    /// Float size / this size.
    pub size_ratio: f64,
    /// Layers quantized, of [`QuantizeReport::layer_count`].
    pub layers_quantized: usize,
    /// Comparison with the float model on the evaluation data.
    pub agreement: Option<Agreement>,
    /// Accuracy drop against the float model in percentage points (positive = worse).
    pub accuracy_drop_points: Option<f64>,
    /// Median latency of the float model, milliseconds, measured interleaved with this one.
    pub float_latency_p50_ms: Option<f64>,
    /// Median latency of this model, milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// This latency / the float latency.
    pub latency_ratio: Option<f64>,
}

/// What happened to one layer of the written model.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The node's name.
    pub node: String,
    /// Conv, Gemm or MatMul.
    pub op: String,
    /// The weight initializer.
    pub weight: String,
    /// The weight's shape.
    pub shape: Vec<i64>,
    /// Its precision in the written model.
    pub precision: Precision,
    /// Weight scales written (output channels, or 1 per tensor).
    pub scales: usize,
    /// Why it is not quantized as requested, or what auto mode measured.
    pub reason: Option<String>,
}

/// The result of `perch quantize`.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// The source model.
    pub model: String,
    /// The written model.
    pub output: String,
    /// The requested mode.
    pub mode: Mode,
    /// The default-domain opset of the written model.
    pub opset: i64,
    /// The default-domain opset of the source model (11 and 12 are converted to 13 for
    /// per-channel scales).
    pub source_opset: i64,
    /// What was done to an exported graph before quantizing it (Constant nodes made
    /// initializers, batch norms folded, the opset converted), as ONNX Runtime's
    /// `quant_pre_process` does.
    pub preparation: Vec<String>,
    /// Whether weight scales are per output channel.
    pub per_channel: bool,
    /// Calibration method, for static quantization.
    pub method: Option<Method>,
    /// Calibration samples used, for static quantization.
    pub calibration_samples: Option<usize>,
    /// The data the comparisons were made on.
    pub evaluation: Option<EvaluationData>,
    /// The float model.
    pub float: FloatSummary,
    /// Every model built, in the order tried.
    pub candidates: Vec<Candidate>,
    /// Conv/Gemm/MatMul layers found.
    pub layer_count: usize,
    /// The layers of the written model.
    pub layers: Vec<LayerReport>,
    /// Auto mode's measurements and choices.
    pub auto: Option<AutoReport>,
    /// Things the user should know (fallbacks, data caveats).
    pub notes: Vec<String>,
}

fn kib(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {} (mode {}, {} weight scales, opset {})",
            self.model,
            self.output,
            self.mode,
            if self.per_channel {
                "per-channel"
            } else {
                "per-tensor"
            },
            if self.source_opset == self.opset {
                self.opset.to_string()
            } else {
                format!("{} -> {}", self.source_opset, self.opset)
            }
        )?;
        for step in &self.preparation {
            writeln!(f, "prepared: {step}")?;
        }
        if let (Some(m), Some(n)) = (self.method, self.calibration_samples) {
            writeln!(f, "calibration: {n} samples, method {m}")?;
        }
        match &self.evaluation {
            Some(e) => writeln!(
                f,
                "evaluation: {} ({} samples{}{})",
                e.source,
                e.samples,
                if e.labelled { ", labelled" } else { "" },
                if e.held_out {
                    ", held-out"
                } else {
                    ", NOT held-out"
                }
            )?,
            None => writeln!(f, "evaluation: none")?,
        }
        writeln!(
            f,
            "float: {}{}",
            kib(self.float.size_bytes),
            self.float
                .accuracy
                .map(|a| format!(", accuracy {:.2}%", a * 100.0))
                .unwrap_or_default()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<8} {:>19} {:>7} {:>10} {:>10} {:>9} {:>17} {:>24}",
            "mode",
            "size (ratio)",
            "top-1",
            "max err",
            "mean err",
            "rel err",
            "accuracy (drop)",
            "p50 float -> int8 (x)"
        )?;
        for c in &self.candidates {
            let size = format!("{} ({:.2}x)", kib(c.size_bytes), c.size_ratio);
            if let Some(e) = &c.engine_error {
                writeln!(
                    f,
                    "{:<8} {:>19} engine cannot run it: {e}",
                    c.mode.to_string(),
                    size
                )?;
                continue;
            }
            let a = c.agreement.clone().unwrap_or_default();
            let measured = c.agreement.is_some();
            let num = |v: f64| {
                if measured {
                    format!("{v:.2e}")
                } else {
                    "-".into()
                }
            };
            let acc = match (a.accuracy, c.accuracy_drop_points) {
                (Some(acc), Some(d)) => format!("{:.2}% ({d:+.2} pts)", acc * 100.0),
                _ => "-".into(),
            };
            let lat = match (c.float_latency_p50_ms, c.latency_p50_ms, c.latency_ratio) {
                (Some(fl), Some(q), Some(r)) => format!("{fl:.3} -> {q:.3} ms ({r:.2}x)"),
                _ => "-".into(),
            };
            writeln!(
                f,
                "{:<8} {:>19} {:>7} {:>10} {:>10} {:>9} {:>17} {:>24}{}",
                c.mode.to_string(),
                size,
                pct(a.top1_agreement),
                num(a.max_abs_error),
                num(a.mean_abs_error),
                num(a.relative_error),
                acc,
                lat,
                if c.written { "  [written]" } else { "" }
            )?;
        }
        writeln!(f)?;
        writeln!(f, "layers of the written model:")?;
        for l in &self.layers {
            let shape: Vec<String> = l.shape.iter().map(i64::to_string).collect();
            write!(
                f,
                "  {:<28} {:<6} [{}] {}",
                l.node,
                l.op,
                shape.join(","),
                l.precision
            )?;
            if l.scales > 0 {
                write!(
                    f,
                    ", {} scale{}",
                    l.scales,
                    if l.scales == 1 { "" } else { "s" }
                )?;
            }
            match &l.reason {
                Some(r) => writeln!(f, ": {r}")?,
                None => writeln!(f)?,
            }
        }
        if let Some(a) = &self.auto {
            writeln!(f)?;
            write!(f, "{a}")?;
        }
        if !self.notes.is_empty() {
            writeln!(f)?;
            writeln!(f, "notes:")?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        writeln!(
            f,
            "\nlatencies are one machine's medians of interleaved runs (informational, noisy on a \
             shared machine)"
        )
    }
}

/// How one precision fared as a whole model, and whether it was tried per layer.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionVerdict {
    /// The precision.
    pub precision: Precision,
    /// Whole-model latency / float latency, when measured.
    pub latency_ratio: Option<f64>,
    /// Whole-model loss in the budget's unit, when measured.
    pub loss: Option<f64>,
    /// Whether it was tried layer by layer.
    pub tried_per_layer: bool,
    /// Why (not).
    pub reason: String,
}

/// One layer quantized alone at one precision.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTrial {
    /// The precision tried.
    pub precision: Precision,
    /// Loss against the float model in the budget's unit (None: the engine failed).
    pub loss: Option<f64>,
    /// Relative output error max|q - f| / max|f| (orders layers whose loss ties).
    pub relative_error: Option<f64>,
    /// Latency of the model with this layer at this precision / with int8 weights there
    /// (integer precisions only).
    pub latency_ratio: Option<f64>,
}

/// Auto mode's decision for one layer.
#[derive(Debug, Clone, Serialize)]
pub struct AutoLayer {
    /// The node's name.
    pub node: String,
    /// Its operator.
    pub op: String,
    /// The precision chosen.
    pub chosen: Precision,
    /// What was measured.
    pub trials: Vec<LayerTrial>,
    /// The reason, in words.
    pub reason: String,
}

/// What auto mode measured and chose.
#[derive(Debug, Clone, Serialize)]
pub struct AutoReport {
    /// The budget, in words.
    pub budget: String,
    /// The unit of every `loss` figure.
    pub loss_unit: String,
    /// The budget as a number in that unit.
    pub budget_value: f64,
    /// Whole-model results per precision.
    pub precisions: Vec<PrecisionVerdict>,
    /// Per-layer decisions, in graph order.
    pub layers: Vec<AutoLayer>,
    /// Layers sent back to float because the combination exceeded the budget.
    pub reverted: Vec<String>,
    /// The loss of the chosen combination.
    pub combined_loss: Option<f64>,
    /// Caveats about the measurements.
    pub notes: Vec<String>,
}

impl AutoReport {
    /// Each layer's reason, by layer index.
    pub(crate) fn reasons(&self) -> BTreeMap<usize, String> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.reason.clone()))
            .collect()
    }
}

/// A loss in words.
pub(super) fn fmt_loss(loss: Option<f64>, unit: &str) -> String {
    match (loss, unit) {
        (None, _) => "not measured".into(),
        (Some(l), "relative_error") => format!("relative error {:.2}%", l * 100.0),
        (Some(l), "top1_disagreement_points") => format!("top-1 disagreement {l:.2} pts"),
        (Some(l), _) => format!("accuracy drop {l:+.2} pts"),
    }
}

impl fmt::Display for AutoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "auto: budget {}", self.budget)?;
        for v in &self.precisions {
            writeln!(f, "  {}: {}", v.precision, v.reason)?;
        }
        if !self.reverted.is_empty() {
            writeln!(
                f,
                "  sent back to float to meet the budget: {}",
                self.reverted.join(", ")
            )?;
        }
        writeln!(
            f,
            "  chosen combination: {}",
            fmt_loss(self.combined_loss, &self.loss_unit)
        )?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        writeln!(f, "  per layer:")?;
        for l in &self.layers {
            writeln!(
                f,
                "    {:<28} {:<6} {}: {}",
                l.node, l.op, l.chosen, l.reason
            )?;
        }
        Ok(())
    }
}
