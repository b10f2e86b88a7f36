//! `perch quantize` as a user runs it: round trips on the reference models, the written
//! protobuf, refusals, and the report.

mod exported_graphs;
mod onnx_runtime_export;
mod reference_models;
mod refusals;
mod report;
mod round_trip;

use crate::{json, models, perch};

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray_npy::{NpzReader, NpzWriter, WriteNpyExt};
use perch_runtime::engine::{read_npy, Input, LoadOptions, Model};
use perch_tools::onnx::{pb, read_model, write_model};
use tract_onnx::prelude::tract_ndarray::{Array1, Array2, ArrayD, IxDyn};

const REFERENCE_MODELS: [&str; 4] = ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"];

/// Runs `perch quantize --json ARGS` and returns its report; fails the test on a non-zero exit.
fn quantize(args: &[&str]) -> serde_json::Value {
    let out = perch()
        .arg("quantize")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perch quantize {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// R1's held-out split: x [450, 64] f32, y [450] i64.
fn heldout() -> (Array2<f32>, Array1<i64>) {
    let mut npz =
        NpzReader::new(File::open(models().join("digits-mlp/heldout.npz")).unwrap()).unwrap();
    (npz.by_name("x").unwrap(), npz.by_name("y").unwrap())
}

fn write_npz(path: &Path, x: &Array2<f32>, y: Option<&Array1<i64>>) {
    let mut npz = NpzWriter::new(File::create(path).unwrap());
    npz.add_array("x", x).unwrap();
    if let Some(y) = y {
        npz.add_array("y", y).unwrap();
    }
    npz.finish().unwrap();
}

/// Writes R1's held-out samples split in two: the first 150 for calibration (no labels),
/// the other 300 with labels for evaluation.
fn split_heldout(dir: &Path) -> (PathBuf, PathBuf) {
    let (x, y) = heldout();
    let calibration = dir.join("calibration.npz");
    let eval = dir.join("eval.npz");
    write_npz(
        &calibration,
        &x.slice(tract_onnx::prelude::tract_ndarray::s![..150, ..])
            .to_owned(),
        None,
    );
    write_npz(
        &eval,
        &x.slice(tract_onnx::prelude::tract_ndarray::s![150.., ..])
            .to_owned(),
        Some(
            &y.slice(tract_onnx::prelude::tract_ndarray::s![150..])
                .to_owned(),
        ),
    );
    (calibration, eval)
}

/// Top-1 accuracy of a model file on the engine, computed here independently of the report.
fn engine_accuracy(model: &Path, x: &Array2<f32>, y: &Array1<i64>) -> f64 {
    let model = Model::load(model, &LoadOptions::new()).unwrap();
    let shape = [x.nrows(), x.ncols()];
    let data: Vec<f32> = x.iter().copied().collect();
    let out = model.run(&[Input::f32(&shape, &data)]).unwrap();
    let probs = out.f32(0).unwrap();
    let right = probs
        .chunks(10)
        .zip(y.iter())
        .filter(|(row, label)| argmax(row) as i64 == **label)
        .count();
    right as f64 / y.len() as f64
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// A simple seeded generator for synthetic calibration samples (no extra dependency).
fn pseudo_normal(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            // Sum of 4 uniforms, centred and scaled: roughly N(0, 1).
            (0..4)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .sum::<f32>()
                * 1.732
                - 3.464
        })
        .collect()
}

fn initializer<'a>(model: &'a pb::ModelProto, name: &str) -> Option<&'a pb::TensorProto> {
    model
        .graph
        .as_ref()?
        .initializer
        .iter()
        .find(|t| t.name == name)
}

fn f32_values(t: &pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

fn attr(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Files left in a folder, to prove refusals leave no output and no temporary file.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}
