//! Scoring rows of features with one engine session: the model's batch dimension, and
//! outputs turned into per-row predictions and values.

use perch_runtime::engine::internal::{ModelExt, OutputsExt};
use perch_runtime::engine::{DType, Dim, Input, Metadata, Model, Session};

use crate::ToolError;

/// What the prediction column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// The index of the largest value of the first output (a class, `i64`).
    Classify,
    /// The first output's value (`f32`), when it has one value per row.
    Regress,
}

/// How the model's input takes rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShape {
    /// `None`: the batch dimension is symbolic, a whole chunk runs at once; `Some(b)`:
    /// it is fixed, rows run `b` at a time (the last group padded with zeros).
    pub batch: Option<usize>,
    /// The shape of one row (the input's dimensions after the batch dimension).
    pub row: Vec<usize>,
    /// Values per row: the product of `row`.
    pub features: usize,
}

/// Reads the shape of the model's single `f32` input.
pub fn input_shape(meta: &Metadata) -> Result<InputShape, ToolError> {
    let [input] = meta.inputs.as_slice() else {
        return Err(ToolError::Model(format!(
            "batch scoring takes models with one input; this one has {}",
            meta.inputs.len()
        )));
    };
    if input.dtype != DType::F32 {
        return Err(ToolError::Model(format!(
            "input {:?} is {}; batch scoring feeds f32 features",
            input.name, input.dtype
        )));
    }
    let Some((first, rest)) = input.shape.split_first() else {
        return Err(ToolError::Model(format!(
            "input {:?} is a scalar; batch scoring needs a batch dimension",
            input.name
        )));
    };
    let batch = match first {
        Dim::Fixed(n) if *n > 0 => Some(*n),
        Dim::Fixed(_) => {
            return Err(ToolError::Model(format!(
                "input {:?} has an empty batch dimension",
                input.name
            )))
        }
        Dim::Symbolic(_) => None,
    };
    let row = rest
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbolic(s) => Err(ToolError::Model(format!(
                "input {:?} has shape {}: its dimension {s} is not fixed (fix it with \
                 --shape {}=...)",
                input.name,
                input.shape_string(),
                input.name
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let features = row.iter().product();
    Ok(InputShape {
        batch,
        row,
        features,
    })
}

/// The columns of a scored row, in order: `prediction` (when there is one), each
/// output's values (`{output}_{j}`), `model_version`, `scored_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// What `prediction` holds; `None` for a regressor with several values per row.
    pub prediction: Option<Task>,
    /// Each output's name and values per row.
    pub outputs: Vec<(String, usize)>,
    /// Written into every row.
    pub model_version: String,
}

impl Layout {
    /// Output values per row, over all outputs.
    pub fn width(&self) -> usize {
        self.outputs.iter().map(|(_, w)| w).sum()
    }

    /// The names of the value columns, in order.
    pub fn value_columns(&self) -> Vec<String> {
        self.outputs
            .iter()
            .flat_map(|(name, w)| (0..*w).map(move |j| format!("{name}_{j}")))
            .collect()
    }
}

/// One scored chunk.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// Rows in the chunk.
    pub rows: usize,
    /// Per-row classes (when the layout classifies).
    pub classes: Vec<i64>,
    /// Per-row values, row-major, [`Layout::width`] per row.
    pub values: Vec<f32>,
    /// When the chunk was scored, RFC 3339 UTC.
    pub scored_at: String,
}

impl Scored {
    /// The prediction of row `r` as text (empty when the layout has none).
    pub fn prediction_text(&self, layout: &Layout, r: usize) -> String {
        match layout.prediction {
            Some(Task::Classify) => self.classes[r].to_string(),
            Some(Task::Regress) => self.values[r * layout.width()].to_string(),
            None => String::new(),
        }
    }
}

/// Whether the model's first output is computed by a softmax: `--task auto` then
/// classifies.
pub fn ends_in_softmax(model: &Model) -> bool {
    let typed = model.optimized_model();
    typed
        .output_outlets()
        .ok()
        .and_then(|o| o.first().copied())
        .is_some_and(|o| {
            typed.nodes()[o.node]
                .op
                .name()
                .to_ascii_lowercase()
                .contains("softmax")
        })
}

/// Runs one group of zeros through `session` to learn each output's values per row,
/// and fixes the layout.
pub fn probe_layout(
    session: &mut Session,
    shape: &InputShape,
    task: Task,
    model_version: String,
) -> Result<Layout, ToolError> {
    let rows = shape.batch.unwrap_or(1);
    let probe = run_group(session, shape, &vec![0.0; rows * shape.features], rows)?;
    let outputs: Vec<(String, usize)> = probe
        .into_iter()
        .enumerate()
        .map(|(i, (name, values))| {
            let name = if name.is_empty() {
                format!("output{i}")
            } else {
                name
            };
            (name, values.len() / rows)
        })
        .collect();
    let prediction = match task {
        Task::Classify => Some(Task::Classify),
        Task::Regress if outputs.first().is_some_and(|o| o.1 == 1) => Some(Task::Regress),
        Task::Regress => None,
    };
    if outputs.first().is_none_or(|o| o.1 == 0) {
        return Err(ToolError::Model(
            "the model's first output holds no values per row".into(),
        ));
    }
    Ok(Layout {
        prediction,
        outputs,
        model_version,
    })
}

/// Scores `rows` rows of `features` (row-major), in groups the model's batch
/// dimension allows.
pub fn score(
    session: &mut Session,
    shape: &InputShape,
    layout: &Layout,
    features: &[f32],
    rows: usize,
    scored_at: String,
) -> Result<Scored, ToolError> {
    debug_assert_eq!(features.len(), rows * shape.features);
    let width = layout.width();
    let mut scored = Scored {
        rows,
        classes: Vec::with_capacity(rows),
        values: Vec::with_capacity(rows * width),
        scored_at,
    };
    let group = shape.batch.unwrap_or(rows.max(1));
    let mut padded = vec![];
    for start in (0..rows).step_by(group) {
        let real = group.min(rows - start);
        let slice = &features[start * shape.features..(start + real) * shape.features];
        let data = if real < group {
            padded.clear();
            padded.extend_from_slice(slice);
            padded.resize(group * shape.features, 0.0);
            &padded[..]
        } else {
            slice
        };
        let outputs = run_group(session, shape, data, group)?;
        for r in 0..real {
            for ((name, values), (_, w)) in outputs.iter().zip(&layout.outputs) {
                let row = values.get(r * w..(r + 1) * w).ok_or_else(|| {
                    ToolError::Model(format!(
                        "output {name:?} returned {} values for {group} rows, not {w} per row",
                        values.len()
                    ))
                })?;
                scored.values.extend_from_slice(row);
            }
        }
    }
    if layout.prediction == Some(Task::Classify) {
        let first = layout.outputs[0].1;
        scored
            .classes
            .extend(scored.values.chunks(width).map(|row| {
                row[..first]
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |m| m.0 as i64)
            }));
    }
    Ok(scored)
}

/// One run of `rows` rows; each output's name and values as `f32`.
fn run_group(
    session: &mut Session,
    shape: &InputShape,
    data: &[f32],
    rows: usize,
) -> Result<Vec<(String, Vec<f32>)>, ToolError> {
    let dims: Vec<usize> = std::iter::once(rows)
        .chain(shape.row.iter().copied())
        .collect();
    let outputs = session.run(&[Input::f32(&dims, data)])?;
    (0..outputs.len())
        .map(|i| {
            let name = outputs.info(i).map(|t| t.name.clone()).unwrap_or_default();
            let tensor = outputs.tensor(i)?;
            if tensor.shape().first() != Some(&rows) {
                return Err(ToolError::Model(format!(
                    "output {name:?} has shape {:?}: its first dimension is not the batch of {rows}",
                    tensor.shape()
                )));
            }
            let values = crate::f32_values(tensor).ok_or_else(|| {
                    ToolError::Model(format!(
                        "output {name:?} ({:?}) cannot be read as numbers",
                        tensor.datum_type()
                    ))
                })?;
            Ok((name, values))
        })
        .collect()
}
