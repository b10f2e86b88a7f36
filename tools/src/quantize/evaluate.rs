//! Running a float model and a quantized one on the same data and comparing them.

use std::time::{Duration, Instant};

use perch_runtime::engine::{Input, Model};
use serde::Serialize;

use super::data::Dataset;
use crate::ToolError;

/// Samples per engine run when the model takes a batch.
const BATCH: usize = 64;

/// What a model returned over a whole data set.
#[derive(Debug, Clone)]
pub(crate) struct Outputs {
    /// Each float output, concatenated over the runs.
    pub values: Vec<Vec<f32>>,
    /// Columns of output 0 when it is classification-shaped (`[rows, classes]`).
    pub classes: Option<usize>,
}

impl Outputs {
    /// The argmax of each row of output 0, when it is classification-shaped.
    pub fn top1(&self) -> Option<Vec<usize>> {
        let c = self.classes?;
        Some(
            self.values[0]
                .chunks(c)
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
                            if *v > best.1 {
                                (i, *v)
                            } else {
                                best
                            }
                        })
                        .0
                })
                .collect(),
        )
    }
}

/// Runs `model` over every sample of `data`.
///
/// Output 0 counts as classification-shaped when it is `[rows, C]` with 2 <= C <= 100 000
/// and not the shape of the input (an autoencoder's reconstruction is not a class score).
pub(crate) fn run_all(model: &Model, data: &Dataset) -> Result<Outputs, ToolError> {
    let mut session = model.session()?;
    let mut values: Vec<Vec<f32>> = vec![];
    let mut classes = None;
    for (shape, chunk) in data.runs(BATCH) {
        let out = session.run(&[Input::f32(&shape, chunk)])?;
        if values.is_empty() {
            values = vec![vec![]; out.len()];
            let s = out.shape(0)?;
            let classy = s.len() == 2
                && (2..=100_000).contains(&s[1])
                && s != shape.as_slice()
                && out.f32(0).is_ok();
            classes = classy.then_some(s[1]);
        }
        for (i, v) in values.iter_mut().enumerate() {
            // Only float outputs are compared; integer ones (class ids) are skipped.
            if let Ok(x) = out.f32(i) {
                v.extend_from_slice(x);
            }
        }
    }
    Ok(Outputs { values, classes })
}

/// How a quantized model's outputs compare with the float model's on the same data.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Agreement {
    /// Fraction of rows whose argmax (top-1 class) matches the float model's.
    pub top1_agreement: Option<f64>,
    /// Largest |quantized − float| over every output element.
    pub max_abs_error: f64,
    /// Mean |quantized − float| over every output element.
    pub mean_abs_error: f64,
    /// `max_abs_error` / max |float| (the engine's golden tolerance measure).
    pub relative_error: f64,
    /// Top-1 accuracy against the labels, when the data has labels.
    pub accuracy: Option<f64>,
}

/// Compares `got` with the float `reference`; `labels` give accuracy.
pub(crate) fn agreement(reference: &Outputs, got: &Outputs, labels: Option<&[i64]>) -> Agreement {
    let (mut max_abs, mut sum, mut count, mut scale) = (0f64, 0f64, 0usize, 0f64);
    for (r, g) in reference.values.iter().zip(&got.values) {
        for (a, b) in r.iter().zip(g) {
            let d = (*a as f64 - *b as f64).abs();
            max_abs = max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
            sum += d;
            count += 1;
            scale = scale.max((*a as f64).abs());
        }
    }
    let top1 = match (reference.top1(), got.top1()) {
        (Some(a), Some(b)) if !a.is_empty() => {
            Some(a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64)
        }
        _ => None,
    };
    Agreement {
        top1_agreement: top1,
        max_abs_error: max_abs,
        mean_abs_error: if count > 0 { sum / count as f64 } else { 0.0 },
        relative_error: max_abs / scale.max(f64::MIN_POSITIVE),
        accuracy: accuracy(got, labels),
    }
}

/// Top-1 accuracy of `outputs` against `labels` (one per row).
pub(crate) fn accuracy(outputs: &Outputs, labels: Option<&[i64]>) -> Option<f64> {
    let labels = labels?;
    let top1 = outputs.top1()?;
    if top1.len() != labels.len() || labels.is_empty() {
        return None;
    }
    let right = top1
        .iter()
        .zip(labels)
        .filter(|(p, y)| **p as i64 == **y)
        .count();
    Some(right as f64 / labels.len() as f64)
}

/// Time spent measuring one pair of models.
const LATENCY_BUDGET: Duration = Duration::from_millis(400);

/// Median latency in milliseconds of `a` and `b` on the same input, measured in
/// alternating runs (a b, b a, ...) after a warm-up, so drift on a shared machine hits
/// both alike. Repetitions: as many as fit in about 0.4 s, at least 11 and at most 301.
pub(crate) fn latency_pair(
    a: &Model,
    b: &Model,
    shape: &[usize],
    input: &[f32],
) -> Result<(f64, f64), ToolError> {
    let mut sa = a.session()?;
    let mut sb = b.session()?;
    let inputs = [Input::f32(shape, input)];
    let time = |s: &mut perch_runtime::engine::Session| -> Result<f64, ToolError> {
        let start = Instant::now();
        let out = s.run(&inputs)?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        drop(out);
        Ok(elapsed)
    };
    let mut warm = 0.0;
    for _ in 0..3 {
        warm = time(&mut sa)? + time(&mut sb)?;
    }
    let reps = ((LATENCY_BUDGET.as_secs_f64() * 1e3 / warm.max(1e-3)) as usize).clamp(11, 301);
    let (mut ta, mut tb) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for rep in 0..reps {
        if rep % 2 == 0 {
            ta.push(time(&mut sa)?);
            tb.push(time(&mut sb)?);
        } else {
            tb.push(time(&mut sb)?);
            ta.push(time(&mut sa)?);
        }
    }
    Ok((median(&mut ta), median(&mut tb)))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(values: Vec<f32>, classes: Option<usize>) -> Outputs {
        Outputs {
            values: vec![values],
            classes,
        }
    }

    #[test]
    fn agreement_counts_matching_argmaxes_and_measures_errors() {
        let float = outputs(vec![0.9, 0.1, 0.2, 0.8, 0.6, 0.4], Some(2));
        let quant = outputs(vec![0.8, 0.2, 0.3, 0.7, 0.4, 0.6], Some(2));
        let a = agreement(&float, &quant, Some(&[0, 1, 1]));
        assert_eq!(a.top1_agreement, Some(2.0 / 3.0));
        assert!((a.max_abs_error - 0.2).abs() < 1e-6);
        assert!((a.mean_abs_error - (0.1 * 4.0 + 0.2 * 2.0) / 6.0).abs() < 1e-6);
        assert!((a.relative_error - 0.2 / 0.9).abs() < 1e-6);
        assert_eq!(a.accuracy, Some(1.0));
    }

    #[test]
    fn outputs_that_are_not_classification_shaped_have_no_top1() {
        let float = outputs(vec![1.0, 2.0], None);
        let a = agreement(&float, &float, Some(&[0]));
        assert_eq!(a.top1_agreement, None);
        assert_eq!(a.accuracy, None);
        assert_eq!(a.max_abs_error, 0.0);
    }
}
