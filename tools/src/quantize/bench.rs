//! Building quantized models from a plan and measuring them against the float model.

use perch_runtime::engine::{Input, LoadOptions, Model};

use super::data::Dataset;
use super::evaluate::{self, Agreement, Outputs};
use super::report::Candidate;
use super::request::Mode;
use super::rewrite::{self, Applied, Layer, Precision, RewriteOptions};
use crate::onnx::{encode_model, pb};
use crate::ToolError;

/// A quantized model built from a plan.
#[derive(Debug, Clone)]
pub(crate) struct Trial {
    pub(super) mode: Mode,
    pub(super) bytes: Vec<u8>,
    pub(super) applied: Vec<Applied>,
}

impl Trial {
    pub(super) fn quantized(&self) -> usize {
        self.applied
            .iter()
            .filter(|a| a.precision != Precision::Float)
            .count()
    }
}

/// Everything needed to build and measure candidates.
pub(crate) struct Bench<'a> {
    pub(super) source: &'a pb::ModelProto,
    pub(super) layers: &'a [Layer],
    pub(super) options: RewriteOptions,
    pub(super) float_model: &'a Model,
    pub(super) float_size: usize,
    pub(super) eval: Option<&'a Dataset>,
    pub(super) float_outputs: Option<&'a Outputs>,
    pub(super) float_accuracy: Option<f64>,
    pub(super) reference_input: (Vec<usize>, Vec<f32>),
}

/// A trial loaded by the engine and compared with the float model.
pub(crate) struct Measured {
    pub(super) model: Result<Model, String>,
    pub(super) agreement: Option<Agreement>,
}

impl Bench<'_> {
    pub(super) fn build(&self, mode: Mode, plan: &[Precision]) -> Trial {
        let (model, applied) = rewrite::rewrite(self.source, self.layers, plan, &self.options);
        Trial {
            mode,
            bytes: encode_model(&model),
            applied,
        }
    }

    /// Loads a trial on the engine, runs it once on the reference input, and compares
    /// it with the float model on the evaluation data.
    pub(super) fn check(&self, trial: &Trial) -> Result<Measured, ToolError> {
        let model = Model::from_onnx_bytes(&trial.bytes, &LoadOptions::new())
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let (shape, values) = &self.reference_input;
                m.run(&[Input::f32(shape, values)])
                    .map_err(|e| e.to_string())?;
                Ok(m)
            });
        let agreement = match (&model, self.eval, self.float_outputs) {
            (Ok(m), Some(eval), Some(reference)) => {
                let got = evaluate::run_all(m, eval)?;
                Some(evaluate::agreement(reference, &got, eval.labels.as_deref()))
            }
            _ => None,
        };
        Ok(Measured { model, agreement })
    }

    /// The accuracy drop in points of an agreement, when accuracy is known.
    pub(super) fn drop_points(&self, agreement: Option<&Agreement>) -> Option<f64> {
        Some((self.float_accuracy? - agreement?.accuracy?) * 100.0)
    }

    /// Builds the report entry of a trial: engine check, agreement, interleaved latency.
    pub(super) fn measure(&self, trial: &Trial) -> Result<Candidate, ToolError> {
        let measured = self.check(trial)?;
        self.candidate(trial, &measured)
    }

    pub(super) fn candidate(
        &self,
        trial: &Trial,
        measured: &Measured,
    ) -> Result<Candidate, ToolError> {
        let latency = match &measured.model {
            Ok(m) => {
                let (shape, values) = &self.reference_input;
                Some(evaluate::latency_pair(self.float_model, m, shape, values)?)
            }
            Err(_) => None,
        };
        Ok(Candidate {
            mode: trial.mode,
            written: false,
            engine_error: measured.model.as_ref().err().cloned(),
            size_bytes: trial.bytes.len(),
            size_ratio: self.float_size as f64 / trial.bytes.len().max(1) as f64,
            layers_quantized: trial.quantized(),
            agreement: measured.agreement.clone(),
            accuracy_drop_points: self.drop_points(measured.agreement.as_ref()),
            float_latency_p50_ms: latency.map(|l| l.0),
            latency_p50_ms: latency.map(|l| l.1),
            latency_ratio: latency.map(|(f, q)| q / f.max(1e-9)),
        })
    }
}
