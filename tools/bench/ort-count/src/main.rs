//! ONNX Runtime's side of `tools/bench/qemu-count`: load a model in ONNX Runtime, run it
//! `--warmup` times, then exactly `--runs` times, so that counting the whole process
//! under qemu-aarch64 with `--runs N` and `--runs 0` gives the instructions of one warm
//! inference, as `runtime/examples/count.rs` does for Perch.
//!
//! ```sh
//! ORT_DYLIB_PATH=.../libonnxruntime.so.1 ort-count models/kws-dscnn/model.onnx \
//!     --input models/kws-dscnn/golden/input_0.npy \
//!     --expect models/kws-dscnn/golden/output_0.npy --runs 20
//! ```
//!
//! The library is loaded at run time from `ORT_DYLIB_PATH` (the `ort` crate's
//! `load-dynamic`), with its telemetry off (`ORT_DISABLE_TELEMETRY=1` unless the variable
//! is set). The session has one intra-op and one inter-op thread and every graph
//! optimization (`ORT_ENABLE_ALL`). Inputs come from `--input FILE.npy` (one per model
//! input, in order; float32, little-endian, C order), or are filled with 0.5 when none is
//! given (symbolic dimensions become 1). With `--expect FILE.npy` the first output of the
//! first run is compared with that file and the largest error relative to its largest
//! magnitude is reported (no limit is applied: ONNX Runtime's own optimizations and ARM
//! kernels move the numbers a little; the caller decides what is acceptable). With
//! `--save FILE.npy` that output is written to FILE (float32).
//!
//! Prints one JSON line:
//! `{"runs":20,"warmup":3,"input":"npy","max_rel_error":1.2e-7}` (`null` without `--expect`).

use std::error::Error;
use std::hint::black_box;
use std::path::PathBuf;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, ValueType};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str =
    "usage: ORT_DYLIB_PATH=LIB ort-count <model.onnx> [--runs N] [--warmup W] [--input X.npy]... [--expect Y.npy] [--save Z.npy]";

fn main() {
    if let Err(e) = run() {
        eprintln!("ort-count: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut model = None;
    let (mut runs, mut warmup) = (10usize, 3usize);
    let (mut inputs, mut expect, mut save) = (Vec::new(), None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse().map_err(|_| "--runs needs a number")?,
            "--warmup" => warmup = value()?.parse().map_err(|_| "--warmup needs a number")?,
            "--input" => inputs.push(PathBuf::from(value()?)),
            "--expect" => expect = Some(PathBuf::from(value()?)),
            "--save" => save = Some(PathBuf::from(value()?)),
            _ if arg.starts_with('-') => {
                return Err(format!("unknown option {arg}\n{USAGE}").into())
            }
            _ if model.is_none() => model = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}\n{USAGE}").into()),
        }
    }
    let model = model.ok_or(USAGE)?;
    let lib = std::env::var_os("ORT_DYLIB_PATH").ok_or("ORT_DYLIB_PATH is not set")?;

    // Microsoft's builds (the npm package's among them) start a telemetry system with the
    // environment: a thread, an SQLite store under ~/.cache/Microsoft/DeveloperTools and
    // files in /tmp, driven by the clock, which makes the count vary from run to run and is
    // no part of an inference. The variable keeps it from starting at all.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
    let env = ort::init_from(&lib)?.with_telemetry(false).build()?;
    let mut session = Session::builder(&env)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .commit_from_file(&model)?;

    let specs: Vec<(String, Vec<i64>)> = session
        .inputs()
        .iter()
        .map(|i| match i.dtype() {
            ValueType::Tensor { shape, .. } => Ok((
                i.name().to_string(),
                shape.iter().map(|&d| d.max(1)).collect(),
            )),
            other => Err(format!("input {} is not a tensor ({other:?})", i.name())),
        })
        .collect::<std::result::Result<_, _>>()?;
    if !inputs.is_empty() && inputs.len() != specs.len() {
        return Err(format!(
            "the model has {} inputs, {} --input given",
            specs.len(),
            inputs.len()
        )
        .into());
    }
    let mut feeds = Vec::new();
    for (k, (name, shape)) in specs.iter().enumerate() {
        let (shape, data) = match inputs.get(k) {
            Some(path) => read_npy_f32(path)?,
            None => (
                shape.clone(),
                vec![0.5f32; shape.iter().product::<i64>() as usize],
            ),
        };
        let tensor = Tensor::from_array((shape, data)).map_err(|e| format!("input {name}: {e}"))?;
        feeds.push(SessionInputValue::from(tensor));
    }

    let mut max_rel_error = None;
    // At least one run before the measured ones: the check is made on it.
    for k in 0..warmup.max(1) + runs {
        let outputs = session.run(black_box(&feeds[..]))?;
        if k == 0 {
            let (shape, got) = outputs[0].try_extract_tensor::<f32>()?;
            if let Some(path) = &save {
                write_npy_f32(path, shape, got)?;
            }
            if let Some(path) = &expect {
                let (_, want) = read_npy_f32(path)?;
                if got.len() != want.len() {
                    return Err(format!(
                        "output 0 has {} values, {} has {}",
                        got.len(),
                        path.display(),
                        want.len()
                    )
                    .into());
                }
                let scale = want
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()))
                    .max(f32::MIN_POSITIVE);
                let worst = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                max_rel_error = Some(worst / scale);
            }
        }
        drop(black_box(outputs));
    }

    let input = if inputs.is_empty() { "0.5" } else { "npy" };
    let error = max_rel_error.map_or("null".to_string(), |e| format!("{e:.3e}"));
    println!(
        "{{\"runs\":{runs},\"warmup\":{warmup},\"input\":\"{input}\",\"max_rel_error\":{error}}}"
    );
    Ok(())
}

/// Writes a float32 `.npy` file (format 1.0).
fn write_npy_f32(path: &PathBuf, shape: &[i64], data: &[f32]) -> Result<()> {
    let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.trim_end()
    );
    // Magic, version and length take 10 bytes; the header ends in a newline, aligned to 64.
    header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Reads a float32, little-endian, C-order `.npy` file (format 1.0 or 2.0).
fn read_npy_f32(path: &PathBuf) -> Result<(Vec<i64>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |why: &str| format!("{}: {why}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file").into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + len])?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad(&format!("not float32 little-endian C order: {header}")).into());
    }
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<i64>())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let data: Vec<f32> = bytes[start + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.len() as i64 != shape.iter().product::<i64>() {
        return Err(bad("data does not match the shape").into());
    }
    Ok((shape, data))
}
