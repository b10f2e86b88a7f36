#![cfg(feature = "onnx")]
//! What the engine checks for tract (issue 15): index values a request feeds into
//! Gather, and dimensions an ONNX file declares. Models are written by the tests
//! (perch_testkit::onnx).

use perch_runtime::engine::{EngineError, Input, LoadOptions, Model, TensorData};
use perch_testkit::onnx::{Attr, Dim, OnnxModel, FLOAT, INT64};
use perch_testkit::SplitMix64;

/// A 5×3 table (row r holds r, r + 0.1, r + 0.2) gathered by an `int64` input of 4
/// indices along axis 0, through an Unsqueeze and a Squeeze (which keep values), as
/// embedding lookups are written.
fn gather_model() -> Vec<u8> {
    let table: Vec<f32> = (0..5)
        .flat_map(|r| [r as f32, r as f32 + 0.1, r as f32 + 0.2])
        .collect();
    OnnxModel::new(13)
        .input("idx", INT64, &[Dim::Value(4)])
        .initializer_f32("table", &[5, 3], &table)
        .initializer_i64("axes", &[1], &[0])
        .node("Unsqueeze", &["idx", "axes"], &["idx2"], &[])
        .node("Squeeze", &["idx2", "axes"], &["idx1"], &[])
        .node(
            "Gather",
            &["table", "idx1"],
            &["rows"],
            &[Attr::Int("axis", 0)],
        )
        .output("rows", FLOAT, &[Dim::Value(4), Dim::Value(3)])
        .to_bytes()
}

fn indices<'a>(shape: &'a [usize], data: &'a [i64]) -> Input<'a> {
    Input {
        shape,
        data: TensorData::I64(data),
    }
}

fn load(bytes: &[u8]) -> Result<Model, EngineError> {
    Model::from_onnx_bytes(bytes, &LoadOptions::new())
}

/// Indices drawn to hit the edges: in range, just outside, far outside, extremes.
fn random_index(rng: &mut SplitMix64) -> i64 {
    match rng.next_u64() % 6 {
        0 => (rng.next_u64() % 5) as i64,
        1 => -((rng.next_u64() % 5) as i64) - 1,
        2 => 5 + (rng.next_u64() % 3) as i64,
        3 => -6 - (rng.next_u64() % 3) as i64,
        4 => [i64::MIN, i64::MAX, i64::MIN + 1, 1 << 40][(rng.next_u64() % 4) as usize],
        _ => rng.next_u64() as i64,
    }
}

#[test]
fn indices_in_range_gather_their_rows_and_negative_ones_count_from_the_end() {
    let model = load(&gather_model()).unwrap();
    let outputs = model.run(&[indices(&[4], &[0, 4, -1, -5])]).unwrap();
    let rows = outputs.f32(0).unwrap();
    assert_eq!(rows[..3], [0.0, 0.1, 0.2]);
    assert_eq!(rows[3], 4.0);
    assert_eq!(rows[6], 4.0);
    assert_eq!(rows[9], 0.0);
}

#[test]
fn an_index_outside_the_gathered_axis_is_refused_before_the_engine_sees_it() {
    let model = load(&gather_model()).unwrap();
    for bad in [5, -6, i64::MAX, i64::MIN] {
        let err = model.run(&[indices(&[4], &[0, 1, bad, 2])]).unwrap_err();
        let EngineError::IndexOutOfRange {
            position,
            value,
            len,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((*position, *value, *len), (2, bad, 5), "{err}");
        assert!(err.to_string().contains("-5..5"), "{err}");
    }
}

/// Random indices, with every panic made fatal as it is in a device build
/// (`panic = "abort"`): the test runs itself again in a child process whose panic hook
/// aborts, and the child must finish cleanly. Without the check, tract indexes past the
/// table and the child dies of SIGABRT.
#[test]
fn random_indices_never_crash_a_build_that_aborts_on_panic() {
    const CHILD: &str = "PERCH_GUARDS_ABORTING_CHILD";
    if std::env::var_os(CHILD).is_some() {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic (fatal, as with panic = \"abort\"): {info}");
            std::process::abort();
        }));
        let model = load(&gather_model()).unwrap();
        let mut session = model.session().unwrap();
        let mut rng = SplitMix64(15);
        let (mut refused, mut answered) = (0, 0);
        for _ in 0..20_000 {
            let idx: Vec<i64> = (0..4).map(|_| random_index(&mut rng)).collect();
            match session.run(&[indices(&[4], &idx)]) {
                Ok(out) => {
                    answered += 1;
                    let rows = out.f32(0).unwrap();
                    for (k, i) in idx.iter().enumerate() {
                        let row = i.rem_euclid(5) as f32;
                        assert_eq!(rows[k * 3], row, "{idx:?}");
                    }
                }
                Err(EngineError::IndexOutOfRange { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 1000 && answered > 10, "{refused} {answered}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "random_indices_never_crash_a_build_that_aborts_on_panic",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the child died ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn indices_computed_from_an_input_by_arithmetic_are_refused_at_load() {
    let bytes = OnnxModel::new(13)
        .input("idx", INT64, &[Dim::Value(2)])
        .initializer_f32("table", &[5, 3], &[0.0; 15])
        .initializer_i64("one", &[1], &[1])
        .node("Add", &["idx", "one"], &["shifted"], &[])
        .node(
            "Gather",
            &["table", "shifted"],
            &["rows"],
            &[Attr::Int("axis", 0)],
        )
        .output("rows", FLOAT, &[Dim::Value(2), Dim::Value(3)])
        .to_bytes();
    let err = load(&bytes).unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("cannot be checked"), "{err}");
}

#[test]
fn constant_indices_and_float_models_load_as_before() {
    let bytes = OnnxModel::new(13)
        .input("x", FLOAT, &[Dim::Value(5), Dim::Value(3)])
        .initializer_i64("pick", &[2], &[4, 0])
        .node("Gather", &["x", "pick"], &["rows"], &[Attr::Int("axis", 0)])
        .output("rows", FLOAT, &[Dim::Value(2), Dim::Value(3)])
        .to_bytes();
    let model = load(&bytes).unwrap();
    let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
    let out = model.run(&[Input::f32(&[5, 3], &x)]).unwrap();
    assert_eq!(out.f32(0).unwrap(), [12.0, 13.0, 14.0, 0.0, 1.0, 2.0]);
}

/// Issue 15: dimensions that overflow the engine's arithmetic (a debug build panics
/// outside the containment, a release build allocates what the file asks) are refused
/// with the tensor's name.
#[test]
fn declared_dimensions_that_overflow_or_go_negative_are_refused_naming_the_tensor() {
    let huge = i64::MAX;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            OnnxModel::new(13)
                .input("x", FLOAT, &[Dim::Value(huge), Dim::Value(huge)])
                .node("Relu", &["x"], &["y"], &[])
                .output("y", FLOAT, &[Dim::Value(huge), Dim::Value(huge)])
                .to_bytes(),
            "\"x\"",
        ),
        (
            OnnxModel::new(13)
                .input("x", FLOAT, &[Dim::Value(-3)])
                .node("Relu", &["x"], &["y"], &[])
                .output("y", FLOAT, &[Dim::Value(3)])
                .to_bytes(),
            "dimension -3",
        ),
        (
            OnnxModel::new(13)
                .input("x", FLOAT, &[Dim::Value(1 << 20), Dim::Value(1 << 20)])
                .node("Relu", &["x"], &["y"], &[])
                .output("y", FLOAT, &[Dim::Param("N"), Dim::Param("M")])
                .to_bytes(),
            "elements",
        ),
        (
            OnnxModel::new(13)
                .input("x", FLOAT, &[Dim::Value(4)])
                .initializer("w", FLOAT, &[1 << 40], &[])
                .node("Add", &["x", "w"], &["y"], &[])
                .output("y", FLOAT, &[Dim::Value(4)])
                .to_bytes(),
            "\"w\"",
        ),
    ];
    for (bytes, needle) in cases {
        let err = load(&bytes).unwrap_err();
        assert!(matches!(err, EngineError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}
