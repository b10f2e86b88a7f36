//! A fixed amount of work for counting instructions: load a model, check it, warm it up,
//! then run it exactly `--runs` times on its golden input.
//!
//! Built for aarch64 and run under qemu-aarch64 with Perch's instruction-counting TCG
//! plugin (tools/qemu-plugin/), it gives the aarch64 instructions one inference costs:
//! count the whole process once with `--runs N` and once with `--runs 0`; the
//! difference divided by N is the cost of a warm run, with loading, the check and the
//! warm-up subtracted. `tools/bench/qemu-count` does exactly that.
//!
//! ```sh
//! cargo build --release -p perch-runtime --example count --target aarch64-unknown-linux-gnu
//! qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu \
//!     -plugin target/qemu-plugin/libinsn_count.so,outfile=/tmp/n \
//!     target/aarch64-unknown-linux-gnu/release/examples/count \
//!     models/kws-dscnn/model.w8.onnx --runs 20
//! ```
//!
//! prints one JSON line describing what ran:
//!
//! ```text
//! {"model":"kws-dscnn","variant":"w8","runs":20,"warmup":3,"reference":"w8","max_rel_error":..}
//! ```
//!
//! The model is ONNX or an NNEF archive. The model name is the model file's folder; the
//! variant is what sits between `model.` and the extension (`float` for `model.onnx`).
//! Golden inputs come from `--golden DIR` (default: `golden/` next to the model). The
//! first run's outputs are compared with `output_N.<variant>.npy` when the folder has
//! them, else with the float model's `output_N.npy` (`"reference":"float"`), and the run
//! fails if the relative error exceeds `--tolerance` (default 1e-3; a quantized model
//! checked against float outputs needs a looser one).
//!
//! Options: `--runs N` (default 10; 0 is the baseline), `--warmup W` (default 3),
//! `--golden DIR`, `--tolerance REL`.

mod common;

use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use perch_runtime::engine::{Golden, LoadOptions, Model, Tolerance};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

struct Args {
    model: PathBuf,
    runs: usize,
    warmup: usize,
    golden: Option<PathBuf>,
    tolerance: f32,
}

const USAGE: &str = "usage: count <model> [--runs N] [--warmup W] [--golden DIR] [--tolerance REL]";

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut runs = 10;
    let mut warmup = 3;
    let mut golden = None;
    let mut tolerance = 1e-3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--runs" => runs = number(&arg, value()?)?,
            "--warmup" => warmup = number(&arg, value()?)?,
            "--golden" => golden = Some(PathBuf::from(value()?)),
            "--tolerance" => tolerance = number(&arg, value()?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with('-') => {
                return Err(format!("unknown option {arg}\n{USAGE}").into())
            }
            _ if model.is_none() => model = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}\n{USAGE}").into()),
        }
    }
    Ok(Args {
        model: model.ok_or(USAGE)?,
        runs,
        warmup,
        golden,
        tolerance,
    })
}

/// Parses an option's value, naming the option when it is not a number.
fn number<T: std::str::FromStr>(option: &str, value: String) -> Result<T> {
    value
        .parse()
        .map_err(|_| format!("{option} needs a number, got {value:?}").into())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("count: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let (model_name, variant) = common::names(&args.model);
    let golden_dir = args
        .golden
        .clone()
        .unwrap_or_else(|| args.model.parent().unwrap_or(Path::new(".")).join("golden"));
    let model = Model::load(&args.model, &LoadOptions::new())?;
    let own_outputs =
        variant != "float" && golden_dir.join(format!("output_0.{variant}.npy")).is_file();
    let (golden, reference) = if own_outputs {
        (
            Golden::load_variant(&golden_dir, Some(&variant))?,
            &*variant,
        )
    } else {
        (Golden::load(&golden_dir)?, "float")
    };
    let mut session = model.session()?;

    let report = session.self_test(
        &golden,
        Tolerance {
            relative: args.tolerance,
        },
    )?;
    let max_rel_error = report
        .outputs
        .iter()
        .map(|o| o.relative_error)
        .fold(0f32, f32::max);

    let inputs = golden.input_refs()?;
    for _ in 0..args.warmup {
        drop(black_box(session.run(black_box(&inputs))?));
    }
    for _ in 0..args.runs {
        drop(black_box(session.run(black_box(&inputs))?));
    }

    println!(
        "{{\"model\":{},\"variant\":{},\"runs\":{},\"warmup\":{},\"reference\":{},\
         \"max_rel_error\":{:.3e}}}",
        serde_json::Value::from(model_name),
        serde_json::Value::from(variant.as_str()),
        args.runs,
        args.warmup,
        serde_json::Value::from(reference),
        max_rel_error,
    );
    Ok(())
}
