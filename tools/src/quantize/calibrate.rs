//! Activation ranges for static quantization, measured by running the float model on
//! the engine with the activations to quantize added as extra graph outputs.

use std::collections::HashMap;
use std::io::IsTerminal;

use perch_runtime::engine::{Input, LoadOptions, Model};
use serde::Serialize;

use super::data::Dataset;
use crate::onnx::{encode_model, pb};
use crate::ToolError;

/// How an activation's range is chosen from the values seen during calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The smallest and largest values seen.
    #[default]
    Minmax,
    /// Clip each tail at (100 − P) / 2 % of the values, P from `--percentile` (99.99).
    Percentile,
    /// The clipping threshold minimizing the KL divergence between the value histogram
    /// and its quantized form (TensorRT's entropy calibration).
    Entropy,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Minmax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        })
    }
}

/// Bins of the histograms behind percentile and entropy calibration.
pub(crate) const BINS: usize = 2048;

/// The largest fraction of values entropy calibration may clip.
pub(crate) const ENTROPY_MAX_CLIPPED: f64 = 0.01;

/// Samples per engine run during calibration when the model takes a batch.
const BATCH: usize = 32;

/// Runs the float `model` over `data` and returns the (min, max) to quantize each of
/// `tensors` with.
pub(crate) fn ranges(
    model: &pb::ModelProto,
    tensors: &[String],
    data: &Dataset,
    method: Method,
    percentile: f64,
) -> Result<HashMap<String, (f32, f32)>, ToolError> {
    if tensors.is_empty() {
        return Ok(HashMap::new());
    }
    let mut probe = model.clone();
    let graph = probe.graph.get_or_insert_with(Default::default);
    // Where each tensor's values come from: an output of the probe model, or the model's
    // input itself (which must not become an output: that would erase its declared type).
    let mut index = Vec::with_capacity(tensors.len());
    let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    for name in tensors {
        if inputs.first() == Some(name) {
            index.push(Source::Input);
            continue;
        }
        match graph.output.iter().position(|o| &o.name == name) {
            Some(i) => index.push(Source::Output(i)),
            None => {
                index.push(Source::Output(graph.output.len()));
                graph.output.push(pb::ValueInfoProto {
                    name: name.clone(),
                    ..Default::default()
                });
            }
        }
    }
    let engine = Model::from_onnx_bytes(&encode_model(&probe), &LoadOptions::new())
        .map_err(|e| ToolError::Model(format!("cannot run the model to calibrate it: {e}")))?;
    let mut session = engine.session()?;
    let passes = if method == Method::Minmax { 1 } else { 2 };
    let bar = progress((data.len() * passes) as u64);
    let runs = data.runs(BATCH);
    let mut minmax = vec![(f32::INFINITY, f32::NEG_INFINITY); tensors.len()];
    let each_run = |session: &mut perch_runtime::engine::Session,
                    f: &mut dyn FnMut(usize, &[f32])|
     -> Result<(), ToolError> {
        for (shape, values) in &runs {
            let outputs = session.run(&[Input::f32(shape, values)])?;
            for (t, source) in index.iter().enumerate() {
                match source {
                    Source::Input => f(t, values),
                    Source::Output(ix) => f(t, outputs.f32(*ix)?),
                }
            }
            bar.inc((shape[0] / data.item_shape[0].max(1)) as u64);
        }
        Ok(())
    };
    bar.set_message("ranges");
    each_run(&mut session, &mut |t, values| {
        let (lo, hi) = &mut minmax[t];
        for v in values {
            *lo = lo.min(*v);
            *hi = hi.max(*v);
        }
    })?;
    let mut result = HashMap::new();
    if method == Method::Minmax {
        for (t, name) in tensors.iter().enumerate() {
            result.insert(name.clone(), minmax[t]);
        }
        bar.finish_and_clear();
        return Ok(result);
    }
    // Second pass: histograms over the ranges found.
    let entropy = method == Method::Entropy;
    let bounds: Vec<(f32, f32)> = minmax
        .iter()
        .map(|(lo, hi)| {
            if entropy {
                (0.0, lo.abs().max(hi.abs()))
            } else {
                (*lo, *hi)
            }
        })
        .collect();
    let mut hists = vec![vec![0u64; BINS]; tensors.len()];
    bar.set_message("histograms");
    each_run(&mut session, &mut |t, values| {
        let (lo, hi) = bounds[t];
        let width = (hi - lo) / BINS as f32;
        let hist = &mut hists[t];
        for v in values {
            // Exact zeros (ReLU outputs, padding) are on the quantization grid whatever the
            // range; left in, their spike would drag the entropy threshold down.
            if entropy && *v == 0.0 {
                continue;
            }
            let v = if entropy { v.abs() } else { *v };
            let bin = if width > 0.0 {
                ((v - lo) / width) as usize
            } else {
                0
            };
            hist[bin.min(BINS - 1)] += 1;
        }
    })?;
    bar.finish_and_clear();
    for (t, name) in tensors.iter().enumerate() {
        let (lo, hi) = minmax[t];
        let range = if entropy {
            let threshold = entropy_threshold(&hists[t], bounds[t].1, lo >= 0.0);
            (lo.max(-threshold), hi.min(threshold))
        } else {
            percentile_range(&hists[t], lo, hi, percentile)
        };
        result.insert(name.clone(), range);
    }
    Ok(result)
}

/// Where calibration reads a tensor's values.
enum Source {
    /// The model's (first) input: the calibration data itself.
    Input,
    /// Output `n` of the probe model.
    Output(usize),
}

/// A progress bar on stderr over `total` samples, hidden when stderr is not a terminal.
fn progress(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "calibrating {msg} {bar:30} {pos}/{len} samples ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The range that leaves (100 − `percentile`) / 2 % of the values outside on each side,
/// from a histogram over [`lo`, `hi`].
pub(crate) fn percentile_range(hist: &[u64], lo: f32, hi: f32, percentile: f64) -> (f32, f32) {
    let total: u64 = hist.iter().sum();
    if total == 0 || hi <= lo {
        return (lo, hi);
    }
    let cut = (100.0 - percentile).clamp(0.0, 100.0) / 200.0 * total as f64;
    let width = (hi - lo) / hist.len() as f32;
    let mut seen = 0u64;
    let mut left = 0;
    for (i, c) in hist.iter().enumerate() {
        if (seen + c) as f64 > cut {
            left = i;
            break;
        }
        seen += c;
    }
    let mut seen = 0u64;
    let mut right = hist.len() - 1;
    for (i, c) in hist.iter().enumerate().rev() {
        if (seen + c) as f64 > cut {
            right = i;
            break;
        }
        seen += c;
    }
    (lo + left as f32 * width, lo + (right + 1) as f32 * width)
}

/// TensorRT's entropy calibration: over a histogram of the non-zero |x| on [0, `amax`], the clipping
/// threshold whose quantized distribution (255 levels for non-negative data, 128 for
/// signed data, one sign) loses the least information (KL divergence), among thresholds
/// that clip at most [`ENTROPY_MAX_CLIPPED`] of the values.
pub(crate) fn entropy_threshold(hist: &[u64], amax: f32, non_negative: bool) -> f32 {
    let bins = hist.len();
    let levels = if non_negative { 255 } else { 128 };
    let width = amax / bins as f32;
    if hist.iter().sum::<u64>() == 0 || amax <= 0.0 || bins <= levels {
        return amax;
    }
    // Never clip more than ENTROPY_MAX_CLIPPED of the values: when the values sit far
    // from zero (a pooled feature in [0.3, 1.4], say), a threshold below nearly all of
    // them turns both distributions into one spike and looks like no loss at all.
    let total: u64 = hist.iter().sum();
    let keep = ((1.0 - ENTROPY_MAX_CLIPPED) * total as f64).ceil() as u64;
    let mut seen = 0u64;
    let first = hist
        .iter()
        .position(|c| {
            seen += c;
            seen >= keep
        })
        .map_or(bins, |b| b + 1);
    let mut best = (f64::INFINITY, bins);
    let mut p = vec![0f64; bins];
    let mut q = vec![0f64; bins];
    for i in levels.max(first)..=bins {
        // Reference: the first i bins, with everything beyond folded into the last one.
        p[..i]
            .iter_mut()
            .zip(hist)
            .for_each(|(p, h)| *p = *h as f64);
        p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
        // Candidate: the first i bins (without the outliers) merged into `levels` groups,
        // each group's count spread evenly over the bins where the reference is non-zero.
        // Clipped outliers thus have no counterpart in the candidate and cost divergence.
        for g in 0..levels {
            let start = g * i / levels;
            let end = ((g + 1) * i / levels).max(start + 1).min(i);
            let sum: u64 = hist[start..end].iter().sum();
            let nonzero = p[start..end].iter().filter(|c| **c > 0.0).count();
            for k in start..end {
                q[k] = if p[k] > 0.0 {
                    sum as f64 / nonzero as f64
                } else {
                    0.0
                };
            }
        }
        let kl = kl_divergence(&p[..i], &q[..i]);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * width
}

/// KL(P || Q) of two unnormalized histograms; bins where Q is empty but P is not get a
/// small probability instead of infinity.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp <= 0.0 || sq <= 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| {
            let (p, q) = (p / sp, (q / sq).max(1e-12));
            p * (p / q).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_calibration_clips_rare_outliers_but_keeps_the_bulk() {
        // 10 000 values uniform over the first half, one outlier in the last bin.
        let mut hist = vec![0u64; 100];
        for h in hist.iter_mut().take(50) {
            *h = 200;
        }
        hist[99] = 1;
        let (lo, hi) = percentile_range(&hist, 0.0, 100.0, 99.9);
        assert_eq!(lo, 0.0);
        assert_eq!(hi, 50.0);
        let (_, all) = percentile_range(&hist, 0.0, 100.0, 100.0);
        assert_eq!(all, 100.0);
    }

    #[test]
    fn entropy_calibration_ignores_a_long_sparse_tail() {
        // A dense bulk on [0, 1) and a handful of outliers up to 8.
        let mut hist = vec![0u64; BINS];
        for (i, h) in hist.iter_mut().enumerate().take(256) {
            *h = 1000 + (i as u64 % 7) * 10;
        }
        hist[BINS - 1] = 2;
        hist[1500] = 1;
        let t = entropy_threshold(&hist, 8.0, true);
        assert!(t < 4.0, "threshold {t} should clip the tail");
        assert!(t >= 1.0, "threshold {t} should keep the bulk");
    }

    #[test]
    fn entropy_calibration_never_clips_most_of_a_distribution_far_from_zero() {
        // Every value in [0.25, 0.75] of the range: a degenerate case for the KL search.
        let mut hist = vec![0u64; BINS];
        for h in hist.iter_mut().take(3 * BINS / 4).skip(BINS / 4) {
            *h = 50;
        }
        let t = entropy_threshold(&hist, 4.0, true);
        assert!(t >= 2.9, "threshold {t} clips more than 1% of the values");
    }

    #[test]
    fn entropy_calibration_keeps_the_range_of_a_uniform_distribution() {
        let hist = vec![100u64; BINS];
        let t = entropy_threshold(&hist, 4.0, true);
        assert!(t > 3.9, "threshold {t}");
    }
}
