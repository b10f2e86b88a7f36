//! `perch batch`: scores checked against the engine run directly and the golden
//! outputs, order over several workers, resuming after a stop or a `kill -9`, and bad
//! input refused with a message that names the problem.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use perch_runtime::engine::{read_npy, Input, LoadOptions, Model};
use tempfile::TempDir;

use crate::{json, models, perch};

fn digits() -> PathBuf {
    models().join("digits-mlp/model.onnx")
}

fn autoencoder() -> PathBuf {
    models().join("anomaly-ae/model.onnx")
}

fn f32s(t: &perch_runtime::engine::Array) -> Vec<f32> {
    t.view().as_f32().unwrap().to_vec()
}

/// The rows of a model's golden input.
fn golden_rows(model: &str) -> Vec<Vec<f32>> {
    let t = read_npy(models().join(model).join("golden/input_0.npy")).unwrap();
    let cols = *t.shape().last().unwrap();
    let values = f32s(&t);
    values.chunks(cols).map(<[f32]>::to_vec).collect()
}

/// `n` distinct rows made from a model's golden rows.
fn rows(model: &str, n: usize) -> Vec<Vec<f32>> {
    let golden = golden_rows(model);
    (0..n)
        .map(|i| {
            let scale = 1.0 + (i / golden.len()) as f32 * 0.013;
            golden[i % golden.len()]
                .iter()
                .enumerate()
                .map(|(j, v)| v * scale + ((i * 7 + j) % 5) as f32 * 0.01)
                .collect()
        })
        .collect()
}

/// Each row's output values, from the engine run on one row at a time.
fn engine_scores(model: &Path, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let model = Model::load(model, &LoadOptions::new()).unwrap();
    let mut session = model.session().unwrap();
    rows.iter()
        .map(|r| {
            let shape = [1, r.len()];
            let out = session.run(&[Input::f32(&shape, r)]).unwrap();
            out.f32(0).unwrap().to_vec()
        })
        .collect()
}

fn argmax(v: &[f32]) -> i64 {
    (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap() as i64
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4 * scale, "{what}: {got:?} vs {want:?}");
    }
}

/// A CSV with an `id` column (not a number) before the features `f0`, `f1`, ...
fn write_csv(path: &Path, rows: &[Vec<f32>]) {
    let mut text = String::from("id");
    for j in 0..rows[0].len() {
        text.push_str(&format!(",f{j}"));
    }
    text.push('\n');
    for (i, r) in rows.iter().enumerate() {
        text.push_str(&format!("row{i}"));
        for v in r {
            text.push_str(&format!(",{v}"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A plain `<f4` array of rows × features.
fn write_npy(path: &Path, rows: &[Vec<f32>]) {
    let mut bytes = npy_header(rows.len(), rows[0].len());
    for v in rows.iter().flatten() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The header of a `<f4` array of `rows` × `cols`.
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(total - 1, b' ');
    bytes.push(b'\n');
    bytes
}

/// A Parquet file: a `label` string column, then the features as f64 columns `f0`...
/// in reverse order (so only `--columns` puts them in the model's order).
fn write_parquet(path: &Path, rows: &[Vec<f32>]) {
    let cols = rows[0].len();
    let mut fields = vec![Field::new("label", DataType::Utf8, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(
        (0..rows.len())
            .map(|i| format!("row{i}"))
            .collect::<Vec<_>>(),
    ))];
    for j in (0..cols).rev() {
        fields.push(Field::new(format!("f{j}"), DataType::Float64, false));
        arrays.push(Arc::new(Float64Array::from(
            rows.iter().map(|r| f64::from(r[j])).collect::<Vec<_>>(),
        )));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// One output row: prediction (as text), values, model_version, scored_at.
type Row = (Option<String>, Vec<f32>, String, String);

fn read_csv(path: &Path) -> (Vec<String>, Vec<Row>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let has_prediction = header[0] == "prediction";
    let n = header.len();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            let first = usize::from(has_prediction);
            (
                has_prediction.then(|| rec[0].to_string()),
                (first..n - 2).map(|i| rec[i].parse().unwrap()).collect(),
                rec[n - 2].to_string(),
                rec[n - 1].to_string(),
            )
        })
        .collect();
    (header, rows)
}

/// Reads the structured `.npy` `perch batch` writes: `classify` says whether it has an
/// `<i8` prediction field, `width` the values per row.
fn read_npy_out(path: &Path, classify: bool, width: usize) -> Vec<Row> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..header_len]).to_string();
    let version_len: usize = header
        .split("('model_version', '|S")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap()
        .parse()
        .unwrap();
    let record = usize::from(classify) * 8 + 4 * width + version_len + 20;
    let data = &bytes[header_len..];
    assert_eq!(
        data.len() % record,
        0,
        "a torn record in {}",
        path.display()
    );
    let rows_declared: usize = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rows_declared, data.len() / record, "{header}");
    data.chunks(record)
        .map(|rec| {
            let mut at = 0;
            let prediction = classify.then(|| {
                at = 8;
                i64::from_le_bytes(rec[..8].try_into().unwrap()).to_string()
            });
            let values = (0..width)
                .map(|j| f32::from_le_bytes(rec[at + 4 * j..at + 4 * j + 4].try_into().unwrap()))
                .collect();
            at += 4 * width;
            let text = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .trim_end_matches('\0')
                    .to_string()
            };
            (
                prediction,
                values,
                text(&rec[at..at + version_len]),
                text(&rec[at + version_len..]),
            )
        })
        .collect()
}

fn read_parquet_out(path: &Path) -> (Vec<String>, Vec<Row>) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut names = vec![];
    let mut rows = vec![];
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let n = names.len();
        for r in 0..batch.num_rows() {
            let prediction = match schema.field(0).data_type() {
                DataType::Int64 => Some(
                    batch
                        .column(0)
                        .as_primitive::<Int64Type>()
                        .value(r)
                        .to_string(),
                ),
                _ => None,
            };
            let first = usize::from(prediction.is_some());
            let values = (first..n - 2)
                .map(|c| batch.column(c).as_primitive::<Float32Type>().value(r))
                .collect();
            let text = |c: usize| batch.column(c).as_string::<i32>().value(r).to_string();
            rows.push((prediction, values, text(n - 2), text(n - 1)));
        }
    }
    (names, rows)
}

fn batch_cmd(model: &Path, input: &Path, output: &Path) -> assert_cmd::Command {
    let mut cmd = perch();
    cmd.arg("batch")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output);
    cmd
}

/// Checks rows against the engine's outputs for `inputs`, and their metadata.
fn assert_scores(rows: &[Row], inputs: &[Vec<f32>], model: &Path, classify: bool) {
    let want = engine_scores(model, inputs);
    assert_eq!(rows.len(), want.len(), "one output row per input row");
    let file_name = model.file_name().unwrap().to_string_lossy();
    for (i, ((prediction, values, version, scored_at), want)) in rows.iter().zip(&want).enumerate()
    {
        assert_close(values, want, &format!("row {i}"));
        if classify {
            assert_eq!(
                prediction.as_deref(),
                Some(argmax(want).to_string().as_str()),
                "row {i}"
            );
        } else {
            assert_eq!(prediction, &None, "row {i}");
        }
        assert!(
            version.starts_with(&format!("{file_name}@sha256:")),
            "{version}"
        );
        assert_eq!(version.len(), file_name.len() + 8 + 12, "{version}");
        let b = scored_at.as_bytes();
        assert!(
            b.len() == 20 && b[10] == b'T' && b[19] == b'Z',
            "{scored_at}"
        );
    }
}

#[test]
fn csv_rows_score_like_the_engine_in_input_order_over_several_workers() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("scores.csv"));
    let inputs = rows("digits-mlp", 500);
    write_csv(&input, &inputs);
    let out = batch_cmd(&digits(), &input, &output)
        .args(["--chunk", "7", "--workers", "3", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report = json(&out);
    assert_eq!(report["rows"], 500);
    assert_eq!(report["scored"], 500);
    assert_eq!(report["complete"], true);
    assert_eq!(report["output"], output.display().to_string());
    assert!(report["rows_per_s"].as_f64().unwrap() > 0.0);
    let (header, rows) = read_csv(&output);
    assert_eq!(header[0], "prediction");
    assert_eq!(header[1], "probabilities_0");
    assert_eq!(header[11..], ["model_version", "scored_at"]);
    assert_scores(&rows, &inputs, &digits(), true);
    assert!(!dir.path().join("scores.csv.checkpoint").exists());
}

#[test]
fn golden_inputs_from_npy_score_to_the_golden_outputs() {
    let dir = TempDir::new().unwrap();
    let input = models().join("digits-mlp/golden/input_0.npy");
    let output = dir.path().join("scores.npy");
    batch_cmd(&digits(), &input, &output)
        .args(["--chunk", "3"])
        .assert()
        .success();
    let golden = read_npy(models().join("digits-mlp/golden/output_0.npy")).unwrap();
    let golden = f32s(&golden);
    let golden: Vec<&[f32]> = golden.chunks(10).collect();
    let rows = read_npy_out(&output, true, 10);
    assert_eq!(rows.len(), golden.len());
    for (row, want) in rows.iter().zip(golden) {
        assert_close(&row.1, want, "golden");
        assert_eq!(row.0.as_deref(), Some(argmax(want).to_string().as_str()));
    }
}

#[test]
fn npy_rows_score_through_a_fixed_batch_of_one_as_a_regressor() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.npy"), dir.path().join("scores.npy"));
    let inputs = rows("anomaly-ae", 9);
    write_npy(&input, &inputs);
    batch_cmd(&autoencoder(), &input, &output)
        .args(["--chunk", "4", "--workers", "2"])
        .assert()
        .success();
    let rows = read_npy_out(&output, false, 640);
    assert_scores(&rows, &inputs, &autoencoder(), false);
    let golden = read_npy(models().join("anomaly-ae/golden/output_0.npy")).unwrap();
    let golden_in = dir.path().join("golden.npy");
    write_npy(&golden_in, &golden_rows("anomaly-ae"));
    let golden_out = dir.path().join("golden_scores.npy");
    batch_cmd(&autoencoder(), &golden_in, &golden_out)
        .assert()
        .success();
    let rows = read_npy_out(&golden_out, false, 640);
    assert_close(&rows[0].1, &f32s(&golden), "golden");
}

#[test]
fn parquet_rows_score_through_named_columns_in_model_order() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (
        dir.path().join("rows.parquet"),
        dir.path().join("scores.parquet"),
    );
    let inputs = rows("digits-mlp", 300);
    write_parquet(&input, &inputs);
    let columns: Vec<String> = (0..64).map(|j| format!("f{j}")).collect();
    batch_cmd(&digits(), &input, &output)
        .args([
            "--chunk",
            "64",
            "--workers",
            "2",
            "--columns",
            &columns.join(","),
        ])
        .assert()
        .success();
    let (names, rows) = read_parquet_out(&output);
    assert_eq!(names[0], "prediction");
    assert_scores(&rows, &inputs, &digits(), true);
    assert!(!dir.path().join("scores.parquet.parts").exists());

    // Without --columns, every numeric column in file order: here reversed, so the
    // scores differ from the model-ordered ones.
    let unordered = dir.path().join("unordered.parquet");
    batch_cmd(&digits(), &input, &unordered).assert().success();
    let (_, other) = read_parquet_out(&unordered);
    assert_eq!(other.len(), 300);
    assert!(other.iter().zip(&rows).any(|(a, b)| a.1 != b.1));
}

/// Output rows without `scored_at`, which differs between runs.
fn without_time(rows: Vec<Row>) -> Vec<(Option<String>, Vec<f32>, String)> {
    rows.into_iter().map(|(p, v, m, _)| (p, v, m)).collect()
}

fn read_any(path: &Path) -> Vec<(Option<String>, Vec<f32>, String)> {
    without_time(match path.extension().unwrap().to_str().unwrap() {
        "csv" => read_csv(path).1,
        "npy" => read_npy_out(path, true, 10),
        _ => read_parquet_out(path).1,
    })
}

/// The same rows in the same order: predictions and model versions equal, values equal
/// up to the rounding that differs between batch sizes. The inputs are distinct rows,
/// so a row lost or written twice shifts every row after it and fails here.
fn assert_same_rows(
    got: &[(Option<String>, Vec<f32>, String)],
    want: &[(Option<String>, Vec<f32>, String)],
    what: &str,
) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!((&g.0, &g.2), (&w.0, &w.2), "{what}: row {i}");
        assert_close(&g.1, &w.1, &format!("{what}: row {i}"));
    }
}

fn checkpoint_rows(output: &Path) -> u64 {
    let path = PathBuf::from(format!("{}.checkpoint", output.display()));
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    c["rows"].as_u64().unwrap()
}

#[test]
fn a_run_stopped_part_way_resumes_to_exactly_the_rows_of_an_uninterrupted_run() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("rows.csv");
    write_csv(&input, &rows("digits-mlp", 200));
    for ext in ["csv", "npy", "parquet"] {
        let whole = dir.path().join(format!("whole.{ext}"));
        batch_cmd(&digits(), &input, &whole).assert().success();
        let parted = dir.path().join(format!("parted.{ext}"));
        let stopped = batch_cmd(&digits(), &input, &parted)
            .args([
                "--chunk",
                "10",
                "--workers",
                "2",
                "--max-rows",
                "55",
                "--json",
            ])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert_eq!(json(&stopped)["complete"], false, "{ext}");
        assert_eq!(checkpoint_rows(&parted), 55, "{ext}");
        if ext != "parquet" {
            // A write torn by a crash after the checkpoint: cut off on resuming.
            let mut bytes = std::fs::read(&parted).unwrap();
            bytes.extend_from_slice(b"9,0.1,0.2,torn");
            std::fs::write(&parted, bytes).unwrap();
        }
        let resumed = batch_cmd(&digits(), &input, &parted)
            .args(["--chunk", "16", "--workers", "3", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let resumed = json(&resumed);
        assert_eq!(resumed["resumed_from"], 55, "{ext}");
        assert_eq!(resumed["scored"], 145, "{ext}");
        assert_same_rows(&read_any(&parted), &read_any(&whole), ext);
    }
}

#[test]
fn a_run_killed_mid_way_resumes_without_losing_or_repeating_rows() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("rows.csv");
    write_csv(&input, &rows("digits-mlp", 20_000));
    let whole = dir.path().join("whole.csv");
    batch_cmd(&digits(), &input, &whole).assert().success();

    let output = dir.path().join("killed.csv");
    let checkpoint = dir.path().join("killed.csv.checkpoint");
    let args = |c: &mut std::process::Command| {
        c.arg("batch")
            .arg(digits())
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--chunk", "8", "--workers", "2", "--checkpoint-every", "0"]);
    };
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("perch"));
    args(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // Kill it once a checkpoint counts some rows (or, on a machine fast enough to
    // finish first, after it ended: the comparison below holds either way).
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        let started = std::fs::read(&checkpoint)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|c| c["rows"].as_u64().unwrap_or(0) > 0);
        if started {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if checkpoint.exists() {
        let rows = checkpoint_rows(&output);
        eprintln!("killed after {rows} checkpointed rows");
    }
    let mut again = std::process::Command::new(assert_cmd::cargo::cargo_bin("perch"));
    args(&mut again);
    let done = again.output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_same_rows(&read_any(&output), &read_any(&whole), "killed");
}

fn refused(cmd: &mut assert_cmd::Command, needle: &[&str]) -> String {
    let out = cmd.assert().code(2).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for n in needle {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_missing_column_is_named_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("out.csv"));
    write_csv(&input, &rows("digits-mlp", 4));
    refused(
        batch_cmd(&digits(), &input, &output).args(["--columns", "f0,nope"]),
        &["no column \"nope\""],
    );
    assert!(!output.exists());
    assert!(!dir.path().join("out.csv.checkpoint").exists());
}

#[test]
fn a_non_numeric_cell_names_its_row_and_column_and_keeps_the_rows_before_it() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("out.csv"));
    write_csv(&input, &rows("digits-mlp", 10));
    let text = std::fs::read_to_string(&input).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cells: Vec<&str> = lines[7].split(',').collect();
    cells[4] = "n/a";
    lines[7] = cells.join(",");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    refused(
        batch_cmd(&digits(), &input, &output).args(["--chunk", "2", "--workers", "1"]),
        &["row 7", "column \"f3\"", "\"n/a\" is not a number"],
    );
    // The rows before the bad chunk are written, and the checkpoint counts exactly them.
    assert_eq!(checkpoint_rows(&output), 6);
    assert_eq!(read_csv(&output).1.len(), 6);
}

#[test]
fn a_feature_count_unlike_the_models_is_refused() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("out.csv"));
    write_csv(&input, &[vec![1.0, 2.0, 3.0]]);
    refused(
        &mut batch_cmd(&digits(), &input, &output),
        &["3 numeric columns", "takes 64 features"],
    );
    let npy = dir.path().join("rows.npy");
    write_npy(&npy, &[vec![1.0; 63]]);
    refused(
        &mut batch_cmd(&digits(), &npy, &output),
        &["63 values per row", "takes 64"],
    );
    assert!(!output.exists());
}

#[test]
fn empty_files_are_refused_as_empty() {
    let dir = TempDir::new().unwrap();
    let output = dir.path().join("out.csv");
    let csv = dir.path().join("empty.csv");
    std::fs::write(&csv, "").unwrap();
    refused(
        &mut batch_cmd(&digits(), &csv, &output),
        &["empty.csv is empty"],
    );
    std::fs::write(&csv, "a,b\n").unwrap();
    refused(&mut batch_cmd(&digits(), &csv, &output), &["no data rows"]);
    let npy = dir.path().join("empty.npy");
    std::fs::write(&npy, npy_header(0, 64)).unwrap();
    refused(&mut batch_cmd(&digits(), &npy, &output), &["empty.npy"]);
    assert!(!output.exists());
}

#[test]
fn truncated_npy_and_parquet_files_are_refused_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let output = dir.path().join("out.csv");
    let npy = dir.path().join("cut.npy");
    write_npy(&npy, &rows("digits-mlp", 5));
    let bytes = std::fs::read(&npy).unwrap();
    std::fs::write(&npy, &bytes[..bytes.len() - 100]).unwrap();
    refused(&mut batch_cmd(&digits(), &npy, &output), &["cut.npy"]);
    let pq = dir.path().join("cut.parquet");
    write_parquet(&pq, &rows("digits-mlp", 5));
    let bytes = std::fs::read(&pq).unwrap();
    std::fs::write(&pq, &bytes[..bytes.len() - 10]).unwrap();
    refused(
        &mut batch_cmd(&digits(), &pq, &output),
        &["cut.parquet is not a Parquet file"],
    );
    assert!(!output.exists());
}

#[test]
fn an_unwritable_output_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("rows.csv");
    write_csv(&input, &rows("digits-mlp", 3));
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    refused(
        &mut batch_cmd(&digits(), &input, &not_a_dir.join("out.csv")),
        &["refusing to write", "file/out.csv", "is not a folder"],
    );
    refused(
        &mut batch_cmd(&digits(), &input, &dir.path().join("out.txt")),
        &["--output", ".csv, .npy or .parquet"],
    );
}

#[test]
fn a_checkpoint_of_another_input_is_refused_until_restart() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("out.csv"));
    write_csv(&input, &rows("digits-mlp", 30));
    batch_cmd(&digits(), &input, &output)
        .args(["--chunk", "5", "--max-rows", "10"])
        .assert()
        .success();
    refused(
        batch_cmd(&digits(), &input, &output).args(["--task", "regress"]),
        &["different settings"],
    );
    write_csv(&input, &rows("digits-mlp", 31));
    refused(
        &mut batch_cmd(&digits(), &input, &output),
        &["different input file", "--restart"],
    );
    batch_cmd(&digits(), &input, &output)
        .arg("--restart")
        .assert()
        .success();
    assert_eq!(read_csv(&output).1.len(), 31);
    // A finished output is not replaced without --restart.
    refused(
        &mut batch_cmd(&digits(), &input, &output),
        &["refusing to write", "--restart"],
    );
}

#[test]
fn help_explains_resuming_and_model_version() {
    let out = perch()
        .args(["batch", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8_lossy(&out);
    for needle in [
        "checkpoint",
        "model_version",
        "sha256",
        "--max-rows",
        "--columns",
        "--workers",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn a_regressor_with_several_values_per_row_has_no_prediction_column() {
    let dir = TempDir::new().unwrap();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("out.parquet"));
    write_csv(&input, &rows("digits-mlp", 5));
    batch_cmd(&digits(), &input, &output)
        .args(["--task", "regress"])
        .assert()
        .success();
    // Ten values per row: no single value to predict, so no prediction column.
    let (names, rows) = read_parquet_out(&output);
    assert_eq!(names[0], "probabilities_0");
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.0.is_none() && r.1.len() == 10));
}

#[test]
fn a_signed_bundle_scores_with_its_manifest_version_and_a_wrong_key_is_refused() {
    let dir = TempDir::new().unwrap();
    let (secret, public) = crate::keygen(dir.path(), "fleet");
    let (_, stranger) = crate::keygen(dir.path(), "stranger");
    let bundle = dir.path().join("digits.perch");
    perch()
        .arg("pack")
        .arg(digits())
        .args(["--name", "digits", "--version", "2.1.0", "--sequence", "4"])
        .arg("--key")
        .arg(&secret)
        .arg("-o")
        .arg(&bundle)
        .assert()
        .success();
    let (input, output) = (dir.path().join("rows.csv"), dir.path().join("scores.csv"));
    let inputs = rows("digits-mlp", 20);
    write_csv(&input, &inputs);
    batch_cmd(&bundle, &input, &output)
        .arg("--pubkey")
        .arg(&public)
        .assert()
        .success();
    let (_, rows) = read_csv(&output);
    let want = engine_scores(&digits(), &inputs);
    assert_eq!(rows.len(), 20);
    for ((prediction, values, version, _), want) in rows.iter().zip(&want) {
        assert_eq!(version, "digits@2.1.0");
        assert_close(values, want, "bundle");
        assert_eq!(
            prediction.as_deref(),
            Some(argmax(want).to_string().as_str())
        );
    }
    let other = dir.path().join("other.csv");
    let err = refused(
        batch_cmd(&bundle, &input, &other)
            .arg("--pubkey")
            .arg(&stranger),
        &[],
    );
    assert!(err.contains("digits.perch"), "{err}");
    assert!(!other.exists());
}

#[test]
fn resuming_reads_parquet_and_npy_inputs_from_the_checkpointed_row() {
    let dir = TempDir::new().unwrap();
    let inputs = rows("digits-mlp", 120);
    let columns: Vec<String> = (0..64).map(|j| format!("f{j}")).collect();
    let columns = columns.join(",");
    for ext in ["parquet", "npy"] {
        let input = dir.path().join(format!("rows.{ext}"));
        let mut extra = vec![];
        if ext == "parquet" {
            write_parquet(&input, &inputs);
            extra = vec!["--columns", columns.as_str()];
        } else {
            write_npy(&input, &inputs);
        }
        let output = dir.path().join(format!("scores-{ext}.csv"));
        // 50 rows in chunks of 16: the last read takes 2 rows of a 16-row batch.
        batch_cmd(&digits(), &input, &output)
            .args(["--chunk", "16", "--max-rows", "50"])
            .args(&extra)
            .assert()
            .success();
        assert_eq!(checkpoint_rows(&output), 50, "{ext}");
        batch_cmd(&digits(), &input, &output)
            .args(["--chunk", "16"])
            .args(&extra)
            .assert()
            .success();
        let (_, rows) = read_csv(&output);
        assert_scores(&rows, &inputs, &digits(), true);
    }
}
