//! Writing scored rows: CSV and `.npy` files appended in place; Parquet is in
//! [`super::parquet`].
//!
//! A sink buffers what it is given and makes it durable on [`Sink::commit`], which
//! returns the position a checkpoint records. Opened with a checkpoint's position, a
//! sink first cuts off whatever an interrupted run wrote beyond it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::score::{Layout, Scored, Task};
use crate::ToolError;

/// Where scored rows go.
pub trait Sink {
    /// Appends a chunk, in input order.
    fn append(&mut self, chunk: &Scored) -> Result<(), ToolError>;
    /// Makes every appended row durable and returns the position to checkpoint.
    fn commit(&mut self) -> Result<u64, ToolError>;
    /// Makes the output final once every row is committed; by default, one more
    /// commit.
    fn finish(mut self: Box<Self>) -> Result<(), ToolError> {
        self.commit().map(drop)
    }
    /// Cuts the output back to the last commit (after an error).
    fn abandon(self: Box<Self>);
}

/// Opens `path` for appending after `resume` bytes (`None` or `Some(0)`: a new file),
/// cutting off anything beyond. Returns the file and whether it is new.
fn open_at(path: &Path, resume: Option<u64>) -> Result<(File, bool), ToolError> {
    let create = |e| ToolError::Io {
        op: crate::IoOp::Create,
        path: path.to_path_buf(),
        source: e,
    };
    match resume {
        None | Some(0) => {
            let file = File::create(path).map_err(create)?;
            Ok((file, true))
        }
        Some(at) => {
            let mut file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| ToolError::write(path, e))?;
            let len = file.metadata().map_err(|e| ToolError::read(path, e))?.len();
            if len < at {
                return Err(ToolError::Data(format!(
                    "{} holds {len} bytes, fewer than the {at} its checkpoint counts: it was \
                     changed since; pass --restart to start over",
                    path.display()
                )));
            }
            file.set_len(at).map_err(|e| ToolError::write(path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| ToolError::write(path, e))?;
            Ok((file, false))
        }
    }
}

/// A file appended in place through a buffer, durable up to its last commit.
struct Appended {
    path: PathBuf,
    writer: BufWriter<File>,
    committed: u64,
}

impl Appended {
    /// `file`, as [`open_at`] opened it for `path` after `resume` bytes.
    fn new(path: &Path, file: File, resume: Option<u64>) -> Appended {
        Appended {
            path: path.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 16, file),
            committed: resume.unwrap_or(0),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ToolError> {
        self.writer
            .write_all(bytes)
            .map_err(|e| ToolError::write(&self.path, e))
    }

    /// Flushes the buffer, fsyncs the file and returns (and records) its length.
    fn commit(&mut self) -> Result<u64, ToolError> {
        let path = &self.path;
        self.writer.flush().map_err(|e| ToolError::write(path, e))?;
        let file = self.writer.get_ref();
        file.sync_data().map_err(|e| ToolError::write(path, e))?;
        self.committed = file.metadata().map_err(|e| ToolError::read(path, e))?.len();
        Ok(self.committed)
    }

    /// Drops what was written after the last commit.
    fn abandon(self) {
        // The buffer is thrown away rather than flushed: the bytes after the commit go.
        let (file, _) = self.writer.into_parts();
        let cut = file.set_len(self.committed).and_then(|()| file.sync_data());
        if let Err(e) = cut {
            log::warn!(
                "cannot cut {} back to {} bytes: {e}",
                self.path.display(),
                self.committed
            );
        }
    }
}

/// A CSV file: a header row, then one row per input row.
pub struct CsvSink {
    file: Appended,
    layout: Layout,
    line: String,
}

impl CsvSink {
    /// Creates `path`, or opens it to continue after `resume` bytes.
    pub fn open(path: &Path, layout: &Layout, resume: Option<u64>) -> Result<CsvSink, ToolError> {
        let (file, new) = open_at(path, resume)?;
        let mut sink = CsvSink {
            file: Appended::new(path, file, resume),
            layout: layout.clone(),
            line: String::new(),
        };
        if new {
            let mut header = vec![];
            if layout.prediction.is_some() {
                header.push("prediction".to_string());
            }
            header.extend(layout.value_columns());
            header.extend(["model_version".into(), "scored_at".into()]);
            let mut w = csv::Writer::from_writer(vec![]);
            w.write_record(&header)
                .map_err(|e| ToolError::Internal(format!("CSV header: {e}")))?;
            let bytes = w
                .into_inner()
                .map_err(|e| ToolError::Internal(format!("CSV header: {e}")))?;
            sink.file.write_all(&bytes)?;
        }
        Ok(sink)
    }
}

impl Sink for CsvSink {
    fn append(&mut self, chunk: &Scored) -> Result<(), ToolError> {
        use std::fmt::Write as _;
        let width = self.layout.width();
        let mut quoted = csv::Writer::from_writer(vec![]);
        quoted
            .write_record([&self.layout.model_version, &chunk.scored_at])
            .map_err(|e| ToolError::Internal(format!("CSV: {e}")))?;
        let tail = quoted
            .into_inner()
            .map_err(|e| ToolError::Internal(format!("CSV: {e}")))?;
        let tail = String::from_utf8_lossy(&tail);
        for r in 0..chunk.rows {
            self.line.clear();
            if self.layout.prediction.is_some() {
                self.line.push_str(&chunk.prediction_text(&self.layout, r));
                self.line.push(',');
            }
            for v in &chunk.values[r * width..(r + 1) * width] {
                // Debug: the shortest text that reads back as the same f32, in exponent
                // notation for tiny and huge values (Display writes 0.0000000000406...).
                let _ = write!(self.line, "{v:?},");
            }
            self.line.push_str(&tail);
            self.file.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<u64, ToolError> {
        self.file.commit()
    }

    fn abandon(self: Box<Self>) {
        self.file.abandon();
    }
}

/// A `.npy` file holding one record per row, with a structured dtype:
/// `prediction` (`<i8` class or `<f4` value), one `<f4` sub-array per output,
/// `model_version` and `scored_at` as byte strings. Its header declares every row of
/// the input, so it loads (`numpy.load`) once the run is complete.
pub struct NpySink {
    file: Appended,
    layout: Layout,
}

/// The length of `scored_at` (`YYYY-MM-DDTHH:MM:SSZ`).
const TIME_LEN: usize = 20;

impl NpySink {
    /// Creates `path` for `rows` records, or opens it to continue after `resume` bytes.
    pub fn open(
        path: &Path,
        layout: &Layout,
        rows: u64,
        resume: Option<u64>,
    ) -> Result<NpySink, ToolError> {
        let header = npy_header(layout, rows);
        if let Some(at) = resume.filter(|at| *at > 0) {
            let record = record_len(layout) as u64;
            let at_record =
                at >= header.len() as u64 && (at - header.len() as u64).is_multiple_of(record);
            if !at_record {
                return Err(ToolError::Data(format!(
                    "{}: its checkpoint's position {at} is not a record boundary; pass \
                     --restart to start over",
                    path.display()
                )));
            }
        }
        let (file, new) = open_at(path, resume)?;
        let mut file = Appended::new(path, file, resume);
        if new {
            file.write_all(&header)?;
        }
        Ok(NpySink {
            file,
            layout: layout.clone(),
        })
    }
}

/// Bytes per record.
fn record_len(layout: &Layout) -> usize {
    let prediction = match layout.prediction {
        Some(Task::Classify) => 8,
        Some(Task::Regress) => 4,
        None => 0,
    };
    prediction + 4 * layout.width() + layout.model_version.len() + TIME_LEN
}

/// The `.npy` (version 1.0, or 2.0 for a header over 64 KiB) header for `rows` records.
pub fn npy_header(layout: &Layout, rows: u64) -> Vec<u8> {
    let mut fields = vec![];
    match layout.prediction {
        Some(Task::Classify) => fields.push("('prediction', '<i8')".to_string()),
        Some(Task::Regress) => fields.push("('prediction', '<f4')".to_string()),
        None => {}
    }
    for (name, w) in &layout.outputs {
        fields.push(format!("('{name}', '<f4', ({w},))"));
    }
    fields.push(format!(
        "('model_version', '|S{}')",
        layout.model_version.len().max(1)
    ));
    fields.push(format!("('scored_at', '|S{TIME_LEN}')"));
    let dict = format!(
        "{{'descr': [{}], 'fortran_order': False, 'shape': ({rows},), }}",
        fields.join(", ")
    );
    let (prefix, version): (usize, [u8; 2]) = if dict.len() + 1 + 10 <= usize::from(u16::MAX) {
        (10, [1, 0])
    } else {
        (12, [2, 0])
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&version);
    if prefix == 10 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

impl Sink for NpySink {
    fn append(&mut self, chunk: &Scored) -> Result<(), ToolError> {
        let width = self.layout.width();
        let mut version = self.layout.model_version.as_bytes().to_vec();
        version.resize(version.len().max(1), 0);
        let mut time = chunk.scored_at.as_bytes().to_vec();
        time.resize(TIME_LEN, 0);
        let mut record = Vec::with_capacity(record_len(&self.layout));
        for r in 0..chunk.rows {
            record.clear();
            match self.layout.prediction {
                Some(Task::Classify) => record.extend_from_slice(&chunk.classes[r].to_le_bytes()),
                Some(Task::Regress) => {
                    record.extend_from_slice(&chunk.values[r * width].to_le_bytes())
                }
                None => {}
            }
            for v in &chunk.values[r * width..(r + 1) * width] {
                record.extend_from_slice(&v.to_le_bytes());
            }
            record.extend_from_slice(&version);
            record.extend_from_slice(&time);
            self.file.write_all(&record)?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<u64, ToolError> {
        self.file.commit()
    }

    fn abandon(self: Box<Self>) {
        self.file.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_npy_header_is_aligned_to_64_bytes_and_ends_in_a_newline() {
        let layout = Layout {
            prediction: Some(Task::Classify),
            outputs: vec![("probabilities".into(), 10)],
            model_version: "digits@1.0.0".into(),
        };
        let h = npy_header(&layout, 1000);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        assert_eq!(h.last(), Some(&b'\n'));
        let text = String::from_utf8_lossy(&h);
        assert!(text.contains("('probabilities', '<f4', (10,))"), "{text}");
        assert!(text.contains("'shape': (1000,)"), "{text}");
        assert_eq!(record_len(&layout), 8 + 40 + 12 + 20);
    }
}
