//! Parquet input and output, through the `parquet` crate's Arrow reader and writer.
//!
//! A Parquet file is only readable once its footer is written, so it cannot be
//! appended to in place and survive a `kill -9`. The sink writes each commit as a
//! complete part file (`out.parquet.parts/part-000000.parquet`, written atomically)
//! and, when every row is scored, merges the parts into the output (temporary file,
//! then rename) and removes them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::input::{check_features, pick_columns, Source};
use super::output::Sink;
use super::score::{Layout, Scored, Task};
use crate::ToolError;

/// Whether a column of this type holds numbers `perch batch` reads as features.
fn numeric(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float16
            | Float32
            | Float64
    )
}

/// A Parquet file's feature columns, read a batch at a time.
pub struct ParquetSource {
    path: PathBuf,
    builder: Option<ParquetRecordBatchReaderBuilder<File>>,
    reader: Option<ParquetRecordBatchReader>,
    names: Vec<String>,
    rows: u64,
    next: u64,
    /// The rows of the last batch that a read asking for fewer left over.
    left: Option<RecordBatch>,
}

impl ParquetSource {
    /// Opens `path` and picks the feature columns: `columns`, or every numeric column.
    pub fn open(
        path: &Path,
        columns: Option<&[String]>,
        features: usize,
        chunk: usize,
    ) -> Result<ParquetSource, ToolError> {
        let file = File::open(path).map_err(|e| ToolError::read(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| ToolError::decode(path, "a Parquet file", e))?;
        let schema = builder.schema().clone();
        let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let picked = pick_columns(path, &header, columns, |i| {
            numeric(schema.field(i).data_type())
        })?;
        for &i in &picked {
            let field = schema.field(i);
            if !numeric(field.data_type()) {
                return Err(ToolError::Data(format!(
                    "{}: column {:?} holds {}, not numbers",
                    path.display(),
                    field.name(),
                    field.data_type()
                )));
            }
        }
        let what = match columns {
            Some(_) => format!("--columns names {} columns", picked.len()),
            None => format!("it has {} numeric columns", picked.len()),
        };
        check_features(path, picked.len(), features, &what)?;
        let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        if rows == 0 {
            return Err(ToolError::Data(format!(
                "{} is empty: it holds no rows",
                path.display()
            )));
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), picked.iter().copied());
        Ok(ParquetSource {
            path: path.to_path_buf(),
            builder: Some(builder.with_projection(mask).with_batch_size(chunk)),
            reader: None,
            names: picked.iter().map(|&i| header[i].clone()).collect(),
            rows,
            next: 0,
            left: None,
        })
    }

    fn reader(&mut self) -> Result<&mut ParquetRecordBatchReader, ToolError> {
        if let Some(builder) = self.builder.take() {
            let reader = builder
                .with_offset(self.next as usize)
                .build()
                .map_err(|e| ToolError::decode(&self.path, "a readable Parquet file", e))?;
            self.reader = Some(reader);
        }
        self.reader
            .as_mut()
            .ok_or_else(|| ToolError::Internal("Parquet reader used after an error".into()))
    }
}

impl Source for ParquetSource {
    fn rows(&self) -> u64 {
        self.rows
    }

    fn skip(&mut self, rows: u64) -> Result<(), ToolError> {
        if self.builder.is_none() {
            return Err(ToolError::Internal("skip after reading".into()));
        }
        self.next = rows;
        Ok(())
    }

    fn read(&mut self, max: usize, out: &mut Vec<f32>) -> Result<usize, ToolError> {
        out.clear();
        let path = self.path.clone();
        let mut batch = match self.left.take() {
            Some(b) => b,
            None => match self.reader()?.next() {
                None => return Ok(0),
                Some(b) => b.map_err(|e| ToolError::decode(&path, "a readable Parquet file", e))?,
            },
        };
        if batch.num_rows() > max {
            self.left = Some(batch.slice(max, batch.num_rows() - max));
            batch = batch.slice(0, max);
        }
        let n = batch.num_rows();
        let columns = self
            .names
            .iter()
            .map(|name| {
                let column = batch.column_by_name(name).ok_or_else(|| {
                    ToolError::Internal(format!("column {name:?} missing from a batch"))
                })?;
                if let Some(r) = (0..n).find(|&r| column.is_null(r)) {
                    return Err(ToolError::Data(format!(
                        "{}: row {}, column {name:?}: the value is missing (null)",
                        path.display(),
                        self.next + r as u64 + 1
                    )));
                }
                Ok(as_f32(column))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.reserve(n * columns.len());
        for r in 0..n {
            out.extend(columns.iter().map(|c| c[r]));
        }
        self.next += n as u64;
        Ok(n)
    }
}

/// A numeric column's values as `f32` (already checked to be [`numeric`]).
fn as_f32(column: &ArrayRef) -> Vec<f32> {
    macro_rules! cast {
        ($t:ty) => {
            column
                .as_primitive::<$t>()
                .values()
                .iter()
                .map(|v| *v as f32)
                .collect()
        };
    }
    match column.data_type() {
        DataType::Float32 => column.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => cast!(Float64Type),
        DataType::Float16 => column
            .as_primitive::<Float16Type>()
            .values()
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        DataType::Int8 => cast!(Int8Type),
        DataType::Int16 => cast!(Int16Type),
        DataType::Int32 => cast!(Int32Type),
        DataType::Int64 => cast!(Int64Type),
        DataType::UInt8 => cast!(UInt8Type),
        DataType::UInt16 => cast!(UInt16Type),
        DataType::UInt32 => cast!(UInt32Type),
        DataType::UInt64 => cast!(UInt64Type),
        _ => vec![f32::NAN; column.len()],
    }
}

/// The Arrow schema of scored rows.
fn schema(layout: &Layout) -> SchemaRef {
    let mut fields = vec![];
    match layout.prediction {
        Some(Task::Classify) => fields.push(Field::new("prediction", DataType::Int64, false)),
        Some(Task::Regress) => fields.push(Field::new("prediction", DataType::Float32, false)),
        None => {}
    }
    for name in layout.value_columns() {
        fields.push(Field::new(name, DataType::Float32, false));
    }
    fields.push(Field::new("model_version", DataType::Utf8, false));
    fields.push(Field::new("scored_at", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// A Parquet output, written as part files until it is finished.
pub struct ParquetSink {
    path: PathBuf,
    parts: PathBuf,
    schema: SchemaRef,
    layout: Layout,
    pending: Vec<RecordBatch>,
    committed: u64,
}

/// `out.parquet` → `out.parquet.parts`.
pub fn parts_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".parts");
    PathBuf::from(name)
}

fn part_path(parts: &Path, n: u64) -> PathBuf {
    parts.join(format!("part-{n:06}.parquet"))
}

impl ParquetSink {
    /// Starts a new output, or continues after `resume` part files.
    pub fn open(
        path: &Path,
        layout: &Layout,
        resume: Option<u64>,
    ) -> Result<ParquetSink, ToolError> {
        let parts = parts_dir(path);
        let committed = resume.unwrap_or(0);
        if committed == 0 && parts.exists() {
            std::fs::remove_dir_all(&parts).map_err(|e| ToolError::write(&parts, e))?;
        }
        std::fs::create_dir_all(&parts).map_err(|e| ToolError::Io {
            op: crate::IoOp::Create,
            path: parts.clone(),
            source: e,
        })?;
        for n in 0..committed {
            if !part_path(&parts, n).is_file() {
                return Err(ToolError::Data(format!(
                    "{} is missing, though its checkpoint counts it; pass --restart to start over",
                    part_path(&parts, n).display()
                )));
            }
        }
        let listing = std::fs::read_dir(&parts).map_err(|e| ToolError::read(&parts, e))?;
        for entry in listing.flatten() {
            let keep = (0..committed).any(|n| part_path(&parts, n) == entry.path());
            if !keep {
                std::fs::remove_file(entry.path())
                    .map_err(|e| ToolError::write(entry.path(), e))?;
            }
        }
        Ok(ParquetSink {
            path: path.to_path_buf(),
            parts,
            schema: schema(layout),
            layout: layout.clone(),
            pending: vec![],
            committed,
        })
    }

    fn batch(&self, chunk: &Scored) -> Result<RecordBatch, ToolError> {
        let width = self.layout.width();
        let mut columns: Vec<ArrayRef> = vec![];
        match self.layout.prediction {
            Some(Task::Classify) => columns.push(Arc::new(Int64Array::from(chunk.classes.clone()))),
            Some(Task::Regress) => columns.push(Arc::new(Float32Array::from_iter_values(
                chunk.values.iter().step_by(width).copied(),
            ))),
            None => {}
        }
        for j in 0..width {
            columns.push(Arc::new(Float32Array::from_iter_values(
                chunk.values.iter().skip(j).step_by(width).copied(),
            )));
        }
        let repeat = |s: &str| Arc::new(StringArray::from(vec![s; chunk.rows])) as ArrayRef;
        columns.push(repeat(&self.layout.model_version));
        columns.push(repeat(&chunk.scored_at));
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| ToolError::Internal(format!("Parquet batch: {e}")))
    }
}

fn writer<W: std::io::Write + Send>(
    out: W,
    schema: SchemaRef,
    path: &Path,
) -> Result<ArrowWriter<W>, ToolError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| ToolError::write(path, e.into()))
}

impl Sink for ParquetSink {
    fn append(&mut self, chunk: &Scored) -> Result<(), ToolError> {
        let batch = self.batch(chunk)?;
        self.pending.push(batch);
        Ok(())
    }

    fn commit(&mut self) -> Result<u64, ToolError> {
        if self.pending.is_empty() {
            return Ok(self.committed);
        }
        let part = part_path(&self.parts, self.committed);
        let mut w = writer(vec![], self.schema.clone(), &part)?;
        for batch in self.pending.drain(..) {
            w.write(&batch)
                .map_err(|e| ToolError::write(&part, e.into()))?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| ToolError::write(&part, e.into()))?;
        crate::fsio::write_atomic(&part, &bytes).map_err(|e| ToolError::write(&part, e))?;
        self.committed += 1;
        Ok(self.committed)
    }

    fn finish(mut self: Box<Self>) -> Result<(), ToolError> {
        self.commit()?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".perch-batch")
            .suffix(crate::fsio::TEMP_SUFFIX)
            .tempfile_in(&dir)
            .map_err(|e| ToolError::write(&self.path, e))?;
        let out = temp
            .as_file()
            .try_clone()
            .map_err(|e| ToolError::write(&self.path, e))?;
        let mut w = writer(out, self.schema.clone(), &self.path)?;
        for n in 0..self.committed {
            let part = part_path(&self.parts, n);
            let file = File::open(&part).map_err(|e| ToolError::read(&part, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| ToolError::decode(&part, "a Parquet part file", e))?;
            for batch in reader {
                let batch =
                    batch.map_err(|e| ToolError::decode(&part, "a Parquet part file", e))?;
                w.write(&batch)
                    .map_err(|e| ToolError::write(&self.path, e.into()))?;
            }
        }
        let file = w
            .into_inner()
            .map_err(|e| ToolError::write(&self.path, e.into()))?;
        // Outputs are meant to be shared, like a file written with `>`.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| ToolError::write(&self.path, e))?;
        }
        file.sync_all()
            .map_err(|e| ToolError::write(&self.path, e))?;
        temp.persist(&self.path)
            .map_err(|e| ToolError::write(&self.path, e.error))?;
        crate::fsio::sync_dir(&dir).map_err(|e| ToolError::write(&dir, e))
    }

    fn abandon(self: Box<Self>) {}
}

/// Removes the part files once the output is final.
pub fn remove_parts(output: &Path) {
    let parts = parts_dir(output);
    if let Err(e) = std::fs::remove_dir_all(&parts) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", parts.display());
        }
    }
}
