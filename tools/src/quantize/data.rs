//! Calibration and evaluation data: `.npy`, `.npz` (`x`, optional `y`) or a folder of them.
//!
//! The first axis of `x` counts samples. Each sample is run with the model's input shape:
//! when the model's leading dimension is symbolic (a batch `N`) or 1, `x` is
//! `[S, rest...]` and each sample runs as `[1, rest...]` (several samples per run when the
//! batch is symbolic); `x` may also be `[S, full input shape...]`, one run per sample.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError, ReadableElement};
use perch_runtime::engine::{DType, Dim, TensorInfo};
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};

use crate::ToolError;

/// Samples for one model input, and their labels when known.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// Where the samples came from, for the report.
    pub source: String,
    /// Shape of one sample as it is run (leading dimension included).
    pub item_shape: Vec<usize>,
    /// Whether several samples may be stacked along the leading (symbolic) dimension.
    pub batchable: bool,
    /// The samples, back to back.
    pub data: Vec<f32>,
    /// Integer labels, one per output row, when the data has `y`.
    pub labels: Option<Vec<i64>>,
}

impl Dataset {
    /// Elements per sample.
    pub fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.data.len() / self.item_len().max(1)
    }

    /// Runs over the samples: `(shape, data)` with up to `max_batch` samples each when the
    /// model takes a batch, one sample otherwise.
    pub fn runs(&self, max_batch: usize) -> Vec<(Vec<usize>, &[f32])> {
        let per_run = if self.batchable { max_batch.max(1) } else { 1 };
        self.data
            .chunks(self.item_len().max(1) * per_run)
            .map(|chunk| {
                let mut shape = self.item_shape.clone();
                shape[0] *= chunk.len() / self.item_len().max(1);
                (shape, chunk)
            })
            .collect()
    }
}

/// Reads `path` (a `.npy`, a `.npz` or a folder of them) as samples for `input`.
///
/// `what` names the role of the data in errors ("calibration data", "evaluation data").
pub(crate) fn load(path: &Path, input: &TensorInfo, what: &str) -> Result<Dataset, ToolError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| usage(format!("cannot read {what} folder {}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("npy" | "npz")))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(usage(format!(
                "{what} folder {} holds no .npy or .npz file",
                path.display()
            )));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    if input.dtype != DType::F32 {
        return Err(usage(format!(
            "the model's input {:?} is {}, but {what} must feed a float (f32) input",
            input.name, input.dtype
        )));
    }
    let mut set: Option<Dataset> = None;
    let mut all_labelled = true;
    for file in &files {
        let (x, y) = read_file(file, what)?;
        let (item_shape, batchable) = fit(file, x.shape(), input, what)?;
        let samples = x.shape()[0];
        let labels = match y {
            Some(y) if y.len() == samples => Some(y),
            Some(y) => {
                return Err(usage(format!(
                    "{what} {}: y holds {} labels for {samples} samples in x",
                    file.display(),
                    y.len()
                )))
            }
            None => None,
        };
        all_labelled &= labels.is_some();
        let data: Vec<f32> = x.iter().copied().collect();
        match set.as_mut() {
            None => {
                set = Some(Dataset {
                    source: path.display().to_string(),
                    item_shape,
                    batchable,
                    data,
                    labels,
                })
            }
            Some(set) => {
                if set.item_shape != item_shape {
                    return Err(usage(format!(
                        "{what} {}: samples of shape {item_shape:?}, but earlier files hold {:?}",
                        file.display(),
                        set.item_shape
                    )));
                }
                set.data.extend(data);
                if let (Some(all), Some(more)) = (set.labels.as_mut(), labels) {
                    all.extend(more);
                }
            }
        }
    }
    let mut set = set.ok_or_else(|| usage(format!("{what} {} is empty", path.display())))?;
    if !all_labelled {
        set.labels = None;
    }
    if set.data.is_empty() {
        return Err(usage(format!("{what} {} holds no samples", path.display())));
    }
    if let Some(bad) = set.data.iter().position(|v| !v.is_finite()) {
        return Err(usage(format!(
            "{what} {}: sample value {bad} is {} (not finite)",
            path.display(),
            set.data[bad]
        )));
    }
    Ok(set)
}

fn usage(message: String) -> ToolError {
    ToolError::Data(message)
}

/// How the found shape maps to runs of the model: (shape of one sample, batchable).
fn fit(
    file: &Path,
    found: &[usize],
    input: &TensorInfo,
    what: &str,
) -> Result<(Vec<usize>, bool), ToolError> {
    let want = &input.shape;
    let fits = |dims: &[usize], shape: &[Dim]| {
        dims.len() == shape.len() && dims.iter().zip(shape).all(|(n, d)| *n > 0 && d.accepts(*n))
    };
    let leading_is_batch = matches!(want.first(), Some(Dim::Symbolic(_)) | Some(Dim::Fixed(1)));
    if !found.is_empty() && found[0] > 0 {
        // [S, rest...] with the model's leading dimension a batch of any size or 1.
        if leading_is_batch && fits(&found[1..], &want[1..]) && found.len() == want.len() {
            let mut item = found.to_vec();
            item[0] = 1;
            return Ok((item, matches!(want[0], Dim::Symbolic(_))));
        }
        // [S, full input shape...]: one run per sample.
        if fits(&found[1..], want) {
            return Ok((found[1..].to_vec(), false));
        }
    }
    let expected = if leading_is_batch {
        let rest: Vec<String> = want[1..].iter().map(Dim::to_string).collect();
        format!("[S,{}]", rest.join(","))
    } else {
        let all: Vec<String> = want.iter().map(Dim::to_string).collect();
        format!("[S,{}]", all.join(","))
    };
    Err(usage(format!(
        "{what} {} has shape {found:?}, but the model's input {:?} takes {}: expected {expected} \
         (S samples)",
        file.display(),
        input.name,
        input.shape_string()
    )))
}

/// Reads `x` (as f32) and the optional integer labels `y` from a .npy or .npz file.
fn read_file(file: &Path, what: &str) -> Result<(ArrayD<f32>, Option<Vec<i64>>), ToolError> {
    let is_npz = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let fail = |reason: String| usage(format!("cannot read {what} {}: {reason}", file.display()));
    let open = || File::open(file).map_err(|e| fail(e.to_string()));
    if !is_npz {
        let x = match ArrayD::<f32>::read_npy(open()?) {
            Err(ReadNpyError::WrongDescriptor(found)) => match ArrayD::<f64>::read_npy(open()?) {
                Ok(x) => Ok(x.mapv(|v| v as f32)),
                Err(_) => Err(fail(wrong_type(&found))),
            },
            other => other.map_err(|e| fail(e.to_string())),
        }?;
        return Ok((x, None));
    }
    let mut npz = NpzReader::new(open()?).map_err(|e| fail(e.to_string()))?;
    let names = npz.names().map_err(|e| fail(e.to_string()))?;
    let x_name = if names.iter().any(|n| n == "x") {
        "x".to_string()
    } else if names.len() == 1 {
        names[0].clone()
    } else {
        return Err(fail(format!(
            "expected an array named x (and optionally y) in the archive, found {}",
            names.join(", ")
        )));
    };
    let x = match npz.by_name::<_, IxDyn>(&x_name) {
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(found))) => {
            match npz.by_name::<_, IxDyn>(&x_name) {
                Ok(x) => {
                    let x: ArrayD<f64> = x;
                    Ok(x.mapv(|v| v as f32))
                }
                Err(_) => Err(fail(format!("{x_name}: {}", wrong_type(&found)))),
            }
        }
        other => other.map_err(|e| fail(format!("{x_name}: {e}"))),
    }?;
    let y = if names.iter().any(|n| n == "y") {
        Some(read_labels(&mut npz).map_err(|e| fail(format!("y: {e}")))?)
    } else {
        None
    };
    Ok((x, y))
}

fn wrong_type(found: &impl std::fmt::Display) -> String {
    format!("expected float32 (or float64) samples, found numpy type {found}")
}

fn read_labels<R: std::io::Read + std::io::Seek>(
    npz: &mut NpzReader<R>,
) -> Result<Vec<i64>, String> {
    fn attempt<T: ReadableElement + Copy + Into<i64>, R: std::io::Read + std::io::Seek>(
        npz: &mut NpzReader<R>,
    ) -> Result<Option<Vec<i64>>, String> {
        match npz.by_name::<_, IxDyn>("y") {
            Ok(a) => {
                let a: ArrayD<T> = a;
                Ok(Some(a.iter().map(|v| (*v).into()).collect()))
            }
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    if let Some(y) = attempt::<i64, R>(npz)? {
        return Ok(y);
    }
    if let Some(y) = attempt::<i32, R>(npz)? {
        return Ok(y);
    }
    if let Some(y) = attempt::<u8, R>(npz)? {
        return Ok(y);
    }
    Err("labels must be integers (int64, int32 or uint8)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::{NpzWriter, WriteNpyExt};

    fn info(shape: Vec<Dim>) -> TensorInfo {
        TensorInfo {
            name: "x".into(),
            shape,
            dtype: DType::F32,
        }
    }

    fn npy(path: &Path, shape: &[usize]) {
        let n = shape.iter().product();
        let a = ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32).collect()).unwrap();
        a.write_npy(File::create(path).unwrap()).unwrap();
    }

    #[test]
    fn a_folder_of_files_is_one_data_set_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        npy(&dir.path().join("b.npy"), &[3, 1, 4]);
        npy(&dir.path().join("a.npy"), &[2, 1, 4]);
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let input = info(vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4)]);
        let set = load(dir.path(), &input, "calibration data").unwrap();
        assert_eq!(set.len(), 5);
        assert_eq!(set.item_shape, vec![1, 1, 4]);
        assert!(!set.batchable);
        assert_eq!(&set.data[..8], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(
            set.runs(64).len(),
            5,
            "one run per sample for a fixed batch of 1"
        );
    }

    #[test]
    fn a_symbolic_batch_runs_several_samples_at_once_and_labels_come_from_y() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let mut npz = NpzWriter::new(File::create(&path).unwrap());
        let x = ArrayD::from_shape_vec(IxDyn(&[5, 2]), vec![0f32; 10]).unwrap();
        let y = ArrayD::from_shape_vec(IxDyn(&[5]), vec![1i64, 2, 3, 4, 5]).unwrap();
        npz.add_array("x", &x).unwrap();
        npz.add_array("y", &y).unwrap();
        npz.finish().unwrap();
        let input = info(vec![Dim::Symbolic("N".into()), Dim::Fixed(2)]);
        let set = load(&path, &input, "evaluation data").unwrap();
        assert_eq!(set.labels, Some(vec![1, 2, 3, 4, 5]));
        let runs = set.runs(2);
        let shapes: Vec<_> = runs.iter().map(|r| r.0.clone()).collect();
        assert_eq!(shapes, vec![vec![2, 2], vec![2, 2], vec![1, 2]]);
    }

    #[test]
    fn samples_stored_with_the_full_input_shape_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        npy(&path, &[3, 1, 1, 4]);
        let input = info(vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4)]);
        let set = load(&path, &input, "calibration data").unwrap();
        assert_eq!((set.len(), set.item_shape.clone()), (3, vec![1, 1, 4]));
    }

    #[test]
    fn data_of_the_wrong_shape_names_the_file_the_expected_and_the_found_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        npy(&path, &[3, 5]);
        let input = info(vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4)]);
        let err = load(&path, &input, "calibration data")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.npy has shape [3, 5]"), "{err}");
        assert!(
            err.contains("takes [1,1,4]") && err.contains("expected [S,1,4]"),
            "{err}"
        );
    }
}
