//! `--mode auto`: choose each layer's precision from measurements on this machine's engine.
//! The algorithm is described in the module documentation of [`super`].

use super::bench::{Bench, Measured, Trial};
use super::evaluate::{self, Agreement};
use super::report::{fmt_loss, AutoLayer, AutoReport, Candidate, LayerTrial, PrecisionVerdict};
use super::request::{Mode, QuantizeRequest};
use super::rewrite::Precision;
use crate::ToolError;

/// An integer precision is tried per layer only if its whole model is at least this much
/// faster than float (latency ratio below 0.95).
pub(crate) const WHOLE_MODEL_SPEEDUP: f64 = 0.95;
/// A layer keeps an integer precision only if the model ran at least 2% faster with it
/// than with int8 weights on that layer.
pub(crate) const LAYER_SPEEDUP: f64 = 0.98;

/// The result of auto mode: the model to write and what was measured.
pub(crate) struct Outcome {
    pub chosen: Trial,
    pub candidates: Vec<Candidate>,
    pub report: AutoReport,
}

/// What auto mode's budget limits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loss {
    /// Accuracy against labels, drop in percentage points.
    AccuracyDrop,
    /// Top-1 disagreement with the float model, in percentage points.
    Disagreement,
    /// max |q - f| / max |f|.
    RelativeError,
}

/// The loss measure and budget for the evaluation data at hand.
struct Budget {
    loss: Loss,
    value: f64,
}

impl Budget {
    fn unit(&self) -> &'static str {
        match self.loss {
            Loss::AccuracyDrop => "accuracy_drop_points",
            Loss::Disagreement => "top1_disagreement_points",
            Loss::RelativeError => "relative_error",
        }
    }

    fn loss(&self, bench: &Bench, a: Option<&Agreement>) -> Option<f64> {
        let a = a?;
        match self.loss {
            Loss::AccuracyDrop => bench.drop_points(Some(a)),
            Loss::Disagreement => a.top1_agreement.map(|t| (1.0 - t) * 100.0),
            Loss::RelativeError => Some(a.relative_error),
        }
    }

    fn within(&self, loss: Option<f64>) -> bool {
        loss.is_some_and(|l| l <= self.value + 1e-9)
    }
}

/// Runs auto mode (see the module documentation of [`super`]).
pub(crate) fn choose(
    bench: &Bench,
    request: &QuantizeRequest,
    have_static: bool,
    have_dynamic: bool,
) -> Result<Outcome, ToolError> {
    let (Some(eval), Some(reference)) = (bench.eval, bench.float_outputs) else {
        return Err(ToolError::Usage(
            "--mode auto needs evaluation data to check accuracy: pass --eval DATA".into(),
        ));
    };
    let budget = if bench.float_accuracy.is_some() {
        Budget {
            loss: Loss::AccuracyDrop,
            value: request.max_accuracy_drop,
        }
    } else if reference.classes.is_some() {
        Budget {
            loss: Loss::Disagreement,
            value: request.max_accuracy_drop,
        }
    } else {
        Budget {
            loss: Loss::RelativeError,
            value: request.max_output_error,
        }
    };
    let budget_text = match budget.loss {
        Loss::RelativeError => format!(
            "relative error max|q - f| / max|f| <= {:.2}% on {} ({} samples; no labels, and the \
             outputs are not class scores)",
            budget.value * 100.0,
            eval.source,
            eval.len()
        ),
        Loss::AccuracyDrop => format!(
            "accuracy drop <= {} pts on {} ({} samples)",
            budget.value,
            eval.source,
            eval.len()
        ),
        Loss::Disagreement => format!(
            "top-1 disagreement with the float model <= {} pts on {} ({} samples, no labels)",
            budget.value,
            eval.source,
            eval.len()
        ),
    };
    let mut notes = vec![];
    let rows = reference.top1().map_or(0, |t| t.len());
    if budget.loss != Loss::RelativeError && rows > 0 && 100.0 / rows as f64 > budget.value {
        notes.push(format!(
            "with {rows} evaluated predictions one changed prediction is {:.2} pts, more than \
             the budget: any flip sends layers back to float. Evaluate on more samples (--eval) \
             for a finer budget",
            100.0 / rows as f64
        ));
    }
    let n = bench.layers.len();

    // 1. Whole-model candidates.
    let mut candidates = vec![];
    let mut verdicts = vec![];
    let mut eligible: Vec<(Precision, f64)> = vec![];
    for (mode, precision, available, missing) in [
        (Mode::Weights, Precision::Weights, true, ""),
        (
            Mode::Dynamic,
            Precision::Dynamic,
            have_dynamic,
            "needs opset 11 (DynamicQuantizeLinear)",
        ),
        (
            Mode::Static,
            Precision::Static,
            have_static,
            "needs --calibration DATA",
        ),
    ] {
        if !available {
            verdicts.push(PrecisionVerdict {
                precision,
                latency_ratio: None,
                loss: None,
                tried_per_layer: false,
                reason: format!("not tried: {missing}"),
            });
            continue;
        }
        let trial = bench.build(mode, &vec![precision; n]);
        let measured = bench.check(&trial)?;
        let candidate = bench.candidate(&trial, &measured)?;
        let loss = budget.loss(bench, measured.agreement.as_ref());
        let ratio = candidate.latency_ratio;
        let reason = match (&candidate.engine_error, ratio) {
            (Some(e), _) => format!("the engine cannot run it: {e}"),
            (None, Some(r)) if precision == Precision::Weights => format!(
                "whole model {r:.2}x float latency (the engine folds the weight dequantization at \
                 load), {}",
                fmt_loss(loss, budget.unit())
            ),
            (None, Some(r)) if r < WHOLE_MODEL_SPEEDUP => {
                eligible.push((precision, r));
                format!("whole model {r:.2}x float latency: tried per layer")
            }
            (None, Some(r)) => format!(
                "whole model {r:.2}x float latency (integer execution does not pay on this \
                 engine): not tried per layer"
            ),
            (None, None) => "not measured".into(),
        };
        verdicts.push(PrecisionVerdict {
            precision,
            latency_ratio: ratio,
            loss,
            tried_per_layer: precision == Precision::Weights
                || eligible.iter().any(|e| e.0 == precision),
            reason,
        });
        candidates.push(candidate);
    }
    eligible.sort_by(|a, b| a.1.total_cmp(&b.1));

    // 2-3. Per-layer sensitivity.
    let mut plan = vec![Precision::Float; n];
    // (loss, relative error) of each quantized layer alone: the relative error orders
    // layers whose loss ties (no prediction changed, say).
    let mut sensitivity = vec![(f64::INFINITY, f64::INFINITY); n];
    let mut layers = vec![];
    for (i, layer) in bench.layers.iter().enumerate() {
        let mut entry = AutoLayer {
            node: layer.name.clone(),
            op: layer.op.clone(),
            chosen: Precision::Float,
            trials: vec![],
            reason: String::new(),
        };
        if let Some(why) = &layer.keep_float {
            entry.reason = format!("stays float: {why}");
            layers.push(entry);
            continue;
        }
        let mut alone = vec![Precision::Float; n];
        alone[i] = Precision::Weights;
        let weights_trial = bench.build(Mode::Auto, &alone);
        if weights_trial.applied[i].precision != Precision::Weights {
            entry.reason = format!(
                "stays float: {}",
                weights_trial.applied[i].note.clone().unwrap_or_default()
            );
            layers.push(entry);
            continue;
        }
        let weights_measured = bench.check(&weights_trial)?;
        let weights_loss = loss_of(&budget, bench, &weights_measured);
        let weights_error = relative_error(&weights_measured);
        entry.trials.push(LayerTrial {
            precision: Precision::Weights,
            loss: weights_loss,
            relative_error: weights_error,
            latency_ratio: None,
        });
        let mut best: Option<(Precision, f64, Option<f64>, Option<f64>)> = None;
        for (precision, _) in &eligible {
            let mut alone = vec![Precision::Float; n];
            alone[i] = *precision;
            let trial = bench.build(Mode::Auto, &alone);
            if trial.applied[i].precision != *precision {
                continue;
            }
            let measured = bench.check(&trial)?;
            let loss = loss_of(&budget, bench, &measured);
            let ratio = match (&weights_measured.model, &measured.model) {
                (Ok(w), Ok(q)) => {
                    let (shape, values) = &bench.reference_input;
                    let (tw, tq) = evaluate::latency_pair(w, q, shape, values)?;
                    Some(tq / tw.max(1e-9))
                }
                _ => None,
            };
            let error = relative_error(&measured);
            entry.trials.push(LayerTrial {
                precision: *precision,
                loss,
                relative_error: error,
                latency_ratio: ratio,
            });
            if let Some(r) = ratio.filter(|r| *r < LAYER_SPEEDUP && budget.within(loss)) {
                if best.is_none_or(|b| r < b.1) {
                    best = Some((*precision, r, loss, error));
                }
            }
        }
        let weights_text = match (budget.loss, weights_error) {
            (Loss::RelativeError, _) | (_, None) => format!(
                "int8 weights alone: {}",
                fmt_loss(weights_loss, budget.unit())
            ),
            (_, Some(e)) => format!(
                "int8 weights alone: {}, relative error {:.2}%",
                fmt_loss(weights_loss, budget.unit()),
                e * 100.0
            ),
        };
        (entry.chosen, entry.reason) = match best {
            Some((p, r, loss, _)) => (
                p,
                format!(
                    "{p} alone: {}, {r:.2}x the latency of int8 weights there; {weights_text}",
                    fmt_loss(loss, budget.unit())
                ),
            ),
            None if budget.within(weights_loss) => {
                (Precision::Weights, format!("{weights_text}, within budget"))
            }
            None => (
                Precision::Float,
                format!("stays float: {weights_text}, over budget"),
            ),
        };
        if entry.chosen != Precision::Float {
            let (loss, error) = match best {
                Some((_, _, loss, error)) => (loss, error),
                None => (weights_loss, weights_error),
            };
            sensitivity[i] = (
                loss.unwrap_or(f64::INFINITY),
                error.unwrap_or(f64::INFINITY),
            );
        }
        for t in entry.trials.iter().skip(1) {
            if t.precision != entry.chosen {
                entry.reason.push_str(&format!(
                    "; {} alone: {}{}",
                    t.precision,
                    fmt_loss(t.loss, budget.unit()),
                    t.latency_ratio
                        .map(|r| format!(", {r:.2}x latency"))
                        .unwrap_or_default()
                ));
            }
        }
        plan[i] = entry.chosen;
        layers.push(entry);
    }

    // 4. Combine, reverting the most sensitive layers while over budget.
    let mut reverted = vec![];
    let (trial, measured, loss) = loop {
        let trial = bench.build(Mode::Auto, &plan);
        let measured = bench.check(&trial)?;
        let loss = loss_of(&budget, bench, &measured);
        if budget.within(loss) || trial.quantized() == 0 {
            break (trial, measured, loss);
        }
        let worst = (0..n)
            .filter(|i| plan[*i] != Precision::Float)
            .max_by(|a, b| {
                let (sa, sb) = (sensitivity[*a], sensitivity[*b]);
                sa.0.total_cmp(&sb.0).then(sa.1.total_cmp(&sb.1))
            });
        let Some(worst) = worst else {
            break (trial, measured, loss);
        };
        plan[worst] = Precision::Float;
        layers[worst].chosen = Precision::Float;
        layers[worst].reason = format!(
            "back to float: the combination was over budget ({}) and this layer was the most \
             sensitive left",
            fmt_loss(loss, budget.unit())
        );
        reverted.push(layers[worst].node.clone());
    };
    if trial.quantized() == 0 {
        return Err(ToolError::Model(format!(
            "auto: no layer can be quantized within the budget ({budget_text})"
        )));
    }
    if let Err(e) = &measured.model {
        return Err(ToolError::Model(format!(
            "refusing to write: the engine cannot run the model auto mode chose: {e}"
        )));
    }
    let mut candidate = bench.candidate(&trial, &measured)?;
    candidate.mode = Mode::Auto;
    candidates.push(candidate);
    Ok(Outcome {
        chosen: trial,
        candidates,
        report: AutoReport {
            budget: budget_text,
            loss_unit: budget.unit().into(),
            budget_value: budget.value,
            precisions: verdicts,
            layers,
            reverted,
            combined_loss: loss,
            notes,
        },
    })
}

fn relative_error(measured: &Measured) -> Option<f64> {
    measured.model.as_ref().ok()?;
    measured.agreement.as_ref().map(|a| a.relative_error)
}

fn loss_of(budget: &Budget, bench: &Bench, measured: &Measured) -> Option<f64> {
    if measured.model.is_err() {
        return None;
    }
    budget.loss(bench, measured.agreement.as_ref())
}
