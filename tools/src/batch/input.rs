//! Reading rows of features: CSV (streamed) and `.npy` (read whole through the
//! engine's [`read_npy`]); Parquet is in [`super::parquet`].

use std::fs::File;
use std::path::{Path, PathBuf};

use perch_runtime::engine::internal::ArrayExt;
use perch_runtime::engine::read_npy;

use crate::ToolError;

/// Rows of `f32` features, read in order.
pub trait Source: Send {
    /// Data rows in the file.
    fn rows(&self) -> u64;
    /// Skips the first `rows` rows (already scored by an interrupted run).
    fn skip(&mut self, rows: u64) -> Result<(), ToolError>;
    /// Reads up to `max` rows into `out` (cleared first), row-major; 0 at the end.
    fn read(&mut self, max: usize, out: &mut Vec<f32>) -> Result<usize, ToolError>;
}

/// Checks that `found` features per row are what the model takes; `what` says where
/// `found` comes from.
pub fn check_features(
    path: &Path,
    found: usize,
    model: usize,
    what: &str,
) -> Result<(), ToolError> {
    if found == model {
        return Ok(());
    }
    Err(ToolError::Data(format!(
        "{}: {what}, but the model takes {model} features per row",
        path.display()
    )))
}

/// Picks the feature columns of a table with `header`: the `--columns` names in
/// order, or else the columns `numeric` says hold numbers, in file order.
pub fn pick_columns(
    path: &Path,
    header: &[String],
    columns: Option<&[String]>,
    numeric: impl Fn(usize) -> bool,
) -> Result<Vec<usize>, ToolError> {
    match columns {
        Some(names) => names
            .iter()
            .map(|name| {
                header.iter().position(|h| h == name).ok_or_else(|| {
                    ToolError::Data(format!(
                        "{}: no column {name:?} (its columns: {})",
                        path.display(),
                        header.join(", ")
                    ))
                })
            })
            .collect(),
        None => {
            let picked: Vec<usize> = (0..header.len()).filter(|i| numeric(*i)).collect();
            if picked.is_empty() {
                return Err(ToolError::Data(format!(
                    "{}: no numeric column (its columns: {})",
                    path.display(),
                    header.join(", ")
                )));
            }
            Ok(picked)
        }
    }
}

/// A CSV file with a header row, read record by record.
pub struct CsvSource {
    path: PathBuf,
    reader: csv::Reader<File>,
    names: Vec<String>,
    picked: Vec<usize>,
    rows: u64,
    /// Data rows read or skipped so far.
    next: u64,
    record: csv::StringRecord,
}

impl CsvSource {
    /// Opens `path`, counts its rows and picks the feature columns: `columns`, or every
    /// column whose first data row holds a number.
    pub fn open(
        path: &Path,
        columns: Option<&[String]>,
        features: usize,
    ) -> Result<CsvSource, ToolError> {
        let open = || -> Result<csv::Reader<File>, ToolError> {
            let file = File::open(path).map_err(|e| ToolError::read(path, e))?;
            Ok(csv::Reader::from_reader(file))
        };
        let mut reader = open()?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(str::to_string)
            .collect();
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(ToolError::Data(format!(
                "{} is empty: expected a header row and data rows",
                path.display()
            )));
        }
        let mut first = csv::StringRecord::new();
        if !reader
            .read_record(&mut first)
            .map_err(|e| csv_error(path, e))?
        {
            return Err(ToolError::Data(format!(
                "{} has a header but no data rows",
                path.display()
            )));
        }
        let mut rows = 1;
        let mut skip = csv::ByteRecord::new();
        while reader
            .read_byte_record(&mut skip)
            .map_err(|e| csv_error(path, e))?
        {
            rows += 1;
        }
        let picked = pick_columns(path, &header, columns, |i| {
            first
                .get(i)
                .is_some_and(|c| c.trim().parse::<f32>().is_ok())
        })?;
        let what = match columns {
            Some(_) => format!("--columns names {} columns", picked.len()),
            None => format!("the first data row has {} numeric columns", picked.len()),
        };
        check_features(path, picked.len(), features, &what)?;
        let mut reader = open()?;
        reader.headers().map_err(|e| csv_error(path, e))?;
        Ok(CsvSource {
            path: path.to_path_buf(),
            reader,
            names: header,
            picked,
            rows,
            next: 0,
            record: csv::StringRecord::new(),
        })
    }
}

fn csv_error(path: &Path, e: csv::Error) -> ToolError {
    match e.kind() {
        csv::ErrorKind::Io(_) => ToolError::read(path, e.into()),
        _ => ToolError::Data(format!("{}: {e}", path.display())),
    }
}

impl Source for CsvSource {
    fn rows(&self) -> u64 {
        self.rows
    }

    fn skip(&mut self, rows: u64) -> Result<(), ToolError> {
        let mut record = csv::ByteRecord::new();
        while self.next < rows {
            if !self
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| csv_error(&self.path, e))?
            {
                return Err(ToolError::Data(format!(
                    "{} has only {} data rows, fewer than the checkpoint's {rows}",
                    self.path.display(),
                    self.next
                )));
            }
            self.next += 1;
        }
        Ok(())
    }

    fn read(&mut self, max: usize, out: &mut Vec<f32>) -> Result<usize, ToolError> {
        out.clear();
        let mut n = 0;
        while n < max
            && self
                .reader
                .read_record(&mut self.record)
                .map_err(|e| csv_error(&self.path, e))?
        {
            self.next += 1;
            let line = self.record.position().map_or(0, |p| p.line());
            for &c in &self.picked {
                let cell = self.record.get(c).unwrap_or("").trim();
                let value = cell.parse::<f32>().map_err(|_| {
                    ToolError::Data(format!(
                        "{}: row {} (line {line}), column {:?}: {cell:?} is not a number",
                        self.path.display(),
                        self.next,
                        self.names[c]
                    ))
                })?;
                out.push(value);
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A `.npy` array of rows × features (or rows × the model's input shape).
pub struct NpySource {
    values: Vec<f32>,
    features: usize,
    rows: u64,
    next: usize,
}

impl NpySource {
    /// Reads the whole array (f32, f64 or integers, cast to f32).
    pub fn open(path: &Path, features: usize) -> Result<NpySource, ToolError> {
        let tensor = read_npy(path)?.into_tensor();
        let shape = tensor.shape().to_vec();
        let (rows, per_row) = match shape.split_first() {
            Some((rows, rest)) => (*rows, rest.iter().product::<usize>()),
            None => {
                return Err(ToolError::Data(format!(
                    "{} holds a scalar, not rows of features",
                    path.display()
                )))
            }
        };
        if rows == 0 {
            return Err(ToolError::Data(format!(
                "{} is empty: its array has shape {shape:?}",
                path.display()
            )));
        }
        let per_row = if shape.len() == 1 { 1 } else { per_row };
        check_features(
            path,
            per_row,
            features,
            &format!("its array has shape {shape:?}, {per_row} values per row"),
        )?;
        let values = crate::f32_values(&tensor).ok_or_else(|| {
            ToolError::Data(format!(
                "{}: {:?} values cannot be read as numbers",
                path.display(),
                tensor.datum_type()
            ))
        })?;
        Ok(NpySource {
            values,
            features,
            rows: rows as u64,
            next: 0,
        })
    }
}

impl Source for NpySource {
    fn rows(&self) -> u64 {
        self.rows
    }

    fn skip(&mut self, rows: u64) -> Result<(), ToolError> {
        self.next = rows.min(self.rows) as usize;
        Ok(())
    }

    fn read(&mut self, max: usize, out: &mut Vec<f32>) -> Result<usize, ToolError> {
        out.clear();
        let n = max.min(self.rows as usize - self.next);
        let f = self.features;
        out.extend_from_slice(&self.values[self.next * f..(self.next + n) * f]);
        self.next += n;
        Ok(n)
    }
}
