#![cfg(feature = "onnx")]
//! ONNX Runtime's int8 files (`quantize_static`, QDQ, per-channel int8 weights, uint8
//! activations: `models/*/model.qdq.onnx`) on Perch's integer kernels: every
//! convolution and matrix product runs on one, the answers are ONNX Runtime's, and an
//! NNEF archive carries the integer operators. `.ci/arm` also runs these under qemu,
//! where `PERCH_EXPECT_KERNELS` names the board's kernel family.

use std::path::{Path, PathBuf};

mod common;

use common::{output_step, steps};
use perch_runtime::engine::internal::{nnef_framework, ops, ModelExt};
use perch_runtime::engine::{Array, Golden, Input, LoadOptions, Model};
use perch_runtime::kernels::Cpu;
use tract_core::internal::*;
use tract_onnx::prelude::{Framework, InferenceModelExt};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn load(path: &Path, options: &LoadOptions) -> Model {
    Model::load(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference models, the number of Conv/Gemm/MatMul nodes in their QDQ files, the
/// number of quantized residual additions (`Q(DQ(a) + DQ(b))`), the number of float
/// tensors quantized outside those layers (the input), and how many output quantization
/// steps (the last DequantizeLinear's scale) Perch may be
/// from ONNX Runtime's node-by-node result (`golden/output_0.qdq.npy`). R4 is 4 steps
/// away, as ONNX Runtime's own fused aarch64 run is (its runs of the file spread over 4
/// steps: `quantized_forms.rs`, BENCHMARKS.md). `quantized_forms.rs` checks more forms; this file also runs
/// under qemu.
const CASES: [(&str, usize, usize, usize, i64); 4] = [
    ("digits-mlp", 3, 0, 2, 0),
    ("kws-dscnn", 10, 0, 2, 0),
    ("anomaly-ae", 10, 0, 10, 0),
    ("mobilenetv2-035", 53, 10, 2, 4),
];

/// The integer kernels' name prefix this CPU (or the emulated board) must plan.
fn expected_gemm() -> &'static str {
    match std::env::var("PERCH_EXPECT_KERNELS").as_deref() {
        Ok(f) if f.starts_with("arm64") => "q8_gemm_neon",
        _ => "q8_gemm_",
    }
}

fn values(a: &Array) -> Vec<f32> {
    a.view().as_f32().unwrap().to_vec()
}

fn run(model: &Model, golden: &Golden) -> Array {
    let out = model
        .session()
        .unwrap()
        .run(&golden.input_refs().unwrap())
        .unwrap();
    Array::from_view(out.view(0).unwrap())
}

#[test]
fn every_layer_of_onnx_runtimes_int8_files_runs_on_integer_kernels_with_its_answer() {
    for (name, layers, adds, quantizes, max_steps) in CASES {
        let path = models().join(name).join("model.qdq.onnx");
        let model = load(&path, &LoadOptions::new());
        let kernels = &model.metadata().kernels;
        let integer: Vec<&str> = kernels
            .iter()
            .filter_map(|k| k.kernel.as_deref())
            .filter(|k| k.starts_with("q8_"))
            .collect();
        println!("{name}: {}", integer.join(" "));
        for k in kernels {
            println!(
                "  {}: {} [{}]",
                k.node,
                k.kernel.as_deref().unwrap_or("-"),
                k.detail
            );
        }
        let count = |prefix: &str| integer.iter().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(count("q8_add_"), adds, "{name}: {kernels:#?}");
        assert_eq!(count("q8_quantize_"), quantizes, "{name}: {kernels:#?}");
        assert_eq!(
            integer.len(),
            layers + adds + quantizes,
            "{name}: {kernels:#?}"
        );
        // Depthwise layers run on the depthwise kernels; everything else on the GEMM.
        assert!(
            integer.iter().all(|k| k.starts_with("q8_dwconv_")
                || k.starts_with("q8_add_")
                || k.starts_with("q8_quantize_")
                || k.starts_with(expected_gemm())),
            "{name}: {integer:?}"
        );
        // Nor does the engine's own quantization run.
        let quantizes_left: Vec<&str> = model
            .optimized_model()
            .nodes()
            .iter()
            .filter(|n| n.op.name().starts_with("QuantizeLinear"))
            .map(|n| n.name.as_str())
            .collect();
        assert!(quantizes_left.is_empty(), "{name}: {quantizes_left:?}");
        let plan = model.optimized_model();
        let float_convs: Vec<&str> = plan
            .nodes()
            .iter()
            .filter(|n| matches!(&*n.op.name(), "Conv" | "OptMatMul" | "EinSum"))
            .map(|n| n.name.as_str())
            .collect();
        assert!(
            float_convs.is_empty(),
            "{name}: float nodes {float_convs:?}"
        );

        let golden = Golden::load_variant(models().join(name).join("golden"), Some("qdq")).unwrap();
        let want = &golden.outputs[0];
        let step = output_step(&path);
        let perch = run(&model, &golden);
        let off = run(
            &load(&path, &LoadOptions::new().perch_kernels(false)),
            &golden,
        );
        let ((perch_steps, _), (tract_steps, _)) = (
            steps(perch.view(), want.view(), step),
            steps(off.view(), want.view(), step),
        );
        println!(
            "{name}: {perch_steps} steps of {step} from ONNX Runtime (tract alone: {tract_steps})"
        );
        assert!(perch_steps <= max_steps, "{name}: {perch_steps} steps");
    }
}

#[test]
fn an_nnef_archive_of_an_int8_model_carries_the_integer_operators_and_their_answers() {
    for (name, ..) in CASES {
        let source = models().join(name).join("model.qdq.onnx");
        let onnx = load(&source, &LoadOptions::new());
        let typed = tract_onnx::onnx()
            .model_for_path(&source)
            .and_then(|m| m.into_typed())
            .and_then(ops::declutter)
            .unwrap();
        let (typed, _) = ops::rewrite(typed, Cpu::detect()).unwrap();
        let mut archive = vec![];
        nnef_framework()
            .write_to_tar(&typed, &mut archive)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.nnef.tar");
        std::fs::write(&path, &archive).unwrap();
        let nnef = load(&path, &LoadOptions::new());
        let planned = |m: &Model| {
            m.metadata()
                .kernels
                .iter()
                .filter_map(|k| k.kernel.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(planned(&nnef), planned(&onnx), "{name}");
        let golden = Golden::load_variant(models().join(name).join("golden"), Some("qdq")).unwrap();
        let (a, b) = (run(&onnx, &golden), run(&nnef, &golden));
        assert_eq!(values(&a), values(&b), "{name}");
    }
}

/// Whether an integer operator's description says its output is channels last (a
/// `PerchQConv` "... HWC ..." or "... CHW->HWC ...", a `PerchQAdd` "HWC ..." or
/// "CHW+HWC->HWC ...", a `PerchQMatMul` "... -> rows, ...").
fn writes_channels_last(op: &str, detail: &str) -> bool {
    let last = |layout: &str| layout.rsplit("->").next() == Some("HWC");
    match op {
        "PerchQConv" => detail.split(' ').nth(1).is_some_and(last),
        "PerchQAdd" => detail.split(' ').next().is_some_and(last),
        _ => detail
            .split(", ")
            .nth(1)
            .is_some_and(|sides| sides.ends_with("-> rows")),
    }
}

#[test]
fn tensors_between_integer_operators_stay_channels_last() {
    // (model, the fewest such tensors it has: DS-CNN's depthwise -> pointwise pairs,
    // MobileNetV2's expansion -> depthwise -> projection chains and the residual sums
    // between blocks)
    for (name, fewest) in [("kws-dscnn", 4), ("mobilenetv2-035", 50)] {
        let path = models().join(name).join("model.qdq.onnx");
        for (how, model) in [
            ("ONNX", load(&path, &LoadOptions::new())),
            ("NNEF", {
                // The rewritten graph as `perch convert` writes it, loaded back.
                let typed = tract_onnx::onnx()
                    .model_for_path(&path)
                    .and_then(|m| m.into_typed())
                    .and_then(ops::declutter)
                    .unwrap();
                let (typed, _) = ops::rewrite(typed, Cpu::detect()).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let archive = dir.path().join("model.nnef.tar");
                let file = std::fs::File::create(&archive).unwrap();
                nnef_framework().write_to_tar(&typed, file).unwrap();
                load(&archive, &LoadOptions::new())
            }),
        ] {
            let plan = model.optimized_model();
            let integer = |id: usize| {
                let op = plan.node(id).op.name();
                matches!(&*op, "PerchQConv" | "PerchQMatMul" | "PerchQAdd").then(|| op.to_string())
            };
            let mut between = 0;
            for node in plan.nodes() {
                let Some(op) = integer(node.id) else { continue };
                let successors = &node.outputs[0].successors;
                if successors.is_empty() || !successors.iter().all(|s| integer(s.node).is_some()) {
                    continue;
                }
                let detail = node.op.info().unwrap().pop().unwrap();
                assert!(
                    writes_channels_last(&op, &detail),
                    "{name} ({how}): {} feeds only integer operators but writes [{detail}]",
                    node.name
                );
                between += 1;
            }
            assert!(
                between >= fewest,
                "{name} ({how}): {between} tensors between integer operators"
            );
        }
    }
}

/// `Q(DQ(a) + DQ(b))` on `[1, 8, 5, 7]` tensors of the given types, tract's own
/// operators; `same` adds the first input to itself.
fn quantized_sum(types: [DatumType; 3], same: bool) -> TypedModel {
    use tract_core::ops::quant::{quantize_linear_i8, quantize_linear_u8, DequantizeLinearF32};
    let mut model = TypedModel::default();
    let shape = [1usize, 8, 5, 7];
    let a = model.add_source("a", types[0].fact(shape)).unwrap();
    let b = if same {
        a
    } else {
        model.add_source("b", types[1].fact(shape)).unwrap()
    };
    let dq = |model: &mut TypedModel, name: &str, x: OutletId, scale: f32, zp: i32| {
        model
            .wire_node(name, DequantizeLinearF32::new(scale, zp), &[x])
            .unwrap()[0]
    };
    let zero = |t: DatumType, zp: i32| if t == i8::datum_type() { zp - 128 } else { zp };
    let fa = dq(&mut model, "dq_a", a, 0.0213, zero(types[0], 131));
    let fb = dq(&mut model, "dq_b", b, 0.0071, zero(types[1], 17));
    let sum = model
        .wire_node("add", tract_core::ops::math::add(), &[fa, fb])
        .unwrap()[0];
    let q = if types[2] == i8::datum_type() {
        quantize_linear_i8(1.0 / 0.0302, -9)
    } else {
        quantize_linear_u8(1.0 / 0.0302, 119)
    };
    let y = model.wire_node("q", q, &[sum]).unwrap()[0];
    model.select_output_outlets(&[y]).unwrap();
    model
}

fn run_typed(model: TypedModel, inputs: &[Tensor]) -> Tensor {
    let plan = model.into_runnable().unwrap();
    let inputs: TVec<TValue> = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
    plan.run(inputs).unwrap().remove(0).into_tensor()
}

#[test]
fn a_quantized_sum_on_the_kernel_gives_the_float_graphs_bytes() {
    let (u8t, i8t) = (u8::datum_type(), i8::datum_type());
    for (types, same) in [
        ([u8t, u8t, u8t], false),
        ([i8t, i8t, i8t], false),
        ([u8t, i8t, i8t], false),
        ([u8t, u8t, u8t], true),
    ] {
        let model = quantized_sum(types, same);
        let (rewritten, report) = ops::rewrite(model.clone(), Cpu::detect()).unwrap();
        let planned: Vec<_> = report.iter().filter_map(|k| k.kernel.as_deref()).collect();
        assert!(
            planned.len() == 1 && planned[0].starts_with("q8_add_"),
            "{types:?}: {report:#?}"
        );
        assert!(
            rewritten
                .nodes()
                .iter()
                .all(|n| !matches!(&*n.op.name(), "Add" | "DequantizeLinearF32")),
            "{types:?}: {rewritten}"
        );
        let inputs: Vec<Tensor> = (0..2 - same as usize)
            .map(|i| {
                let bytes: Vec<u8> = (0..280).map(|v| (v * 37 + i * 101 + 7) as u8).collect();
                if types[i] == i8t {
                    let signed: Vec<i8> = bytes.iter().map(|b| *b as i8).collect();
                    Tensor::from_shape(&[1, 8, 5, 7], &signed).unwrap()
                } else {
                    Tensor::from_shape(&[1, 8, 5, 7], &bytes).unwrap()
                }
            })
            .collect();
        let want = run_typed(model, &inputs);
        let got = run_typed(rewritten, &inputs);
        assert_eq!(got.datum_type(), want.datum_type(), "{types:?}");
        assert_eq!(
            got.try_as_plain_ram().unwrap().as_bytes(),
            want.try_as_plain_ram().unwrap().as_bytes(),
            "{types:?} (same input: {same})"
        );
    }
}

/// Values at every edge of a quantization: ties of each parity, the types' ends, beyond
/// 16 and 32 bits, signed zeros, infinities and NaN.
fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1e10,
        -1e10,
        0.49999997,
        -0.49999997,
    ];
    v.extend((-300..300).map(|k| k as f32 * 0.5));
    v.extend((-300..300).map(|k| k as f32 * 0.37 + 0.001));
    v
}

/// A float tensor quantized by the engine's `QuantizeLinear` and by Perch's kernel: the
/// same bytes, special values included, wherever the engine's arithmetic does not
/// overflow. Where it would (a product beyond ±2^31: its 32-bit zero-point addition
/// panics in a debug build and wraps in a release one), the kernel saturates, as ONNX
/// Runtime does.
#[test]
fn a_float_tensor_quantized_on_the_kernel_gives_the_engines_bytes() {
    use tract_core::ops::quant::{quantize_linear_i8, quantize_linear_u8};
    let all = edge_values();
    for (inverse_scale, zero_point, signed) in [
        (1.0, 0, false),
        (2.0, 128, false),
        (1.0 / 0.0302, 119, false),
        (1.0 / 0.0302, -9, true),
        (0.5, -128, true),
        (3.0, 127, true),
    ] {
        let wraps = |x: f32| (x * inverse_scale).abs() >= 2f32.powi(30);
        let (huge, x): (Vec<f32>, Vec<f32>) = all.iter().partition(|x| wraps(**x));
        let model = |n: usize| {
            let mut model = TypedModel::default();
            let source = model.add_source("x", f32::datum_type().fact([n])).unwrap();
            let q = if signed {
                quantize_linear_i8(inverse_scale, zero_point as i8)
            } else {
                quantize_linear_u8(inverse_scale, zero_point as u8)
            };
            let y = model.wire_node("q", q, &[source]).unwrap()[0];
            model.select_output_outlets(&[y]).unwrap();
            model
        };
        let rewrite = |model: TypedModel| {
            let (rewritten, report) = ops::rewrite(model, Cpu::detect()).unwrap();
            let planned: Vec<_> = report.iter().filter_map(|k| k.kernel.as_deref()).collect();
            assert!(
                planned.len() == 1 && planned[0].starts_with("q8_quantize_"),
                "{report:#?}"
            );
            assert!(
                rewritten
                    .nodes()
                    .iter()
                    .all(|n| !n.op.name().starts_with("QuantizeLinear")),
                "{rewritten}"
            );
            rewritten
        };
        let bytes = |t: Tensor| t.try_as_plain_ram().unwrap().as_bytes().to_vec();
        let input = [Tensor::from_shape(&[x.len()], &x).unwrap()];
        let want = bytes(run_typed(model(x.len()), &input));
        let got = bytes(run_typed(rewrite(model(x.len())), &input));
        for i in 0..x.len() {
            assert_eq!(
                got[i], want[i],
                "x = {} at 1/scale {inverse_scale}, zero point {zero_point}",
                x[i]
            );
        }
        let input = [Tensor::from_shape(&[huge.len()], &huge).unwrap()];
        let got = bytes(run_typed(rewrite(model(huge.len())), &input));
        let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
        for (x, got) in huge.iter().zip(got) {
            let want = if *x > 0.0 { hi } else { lo };
            let got = if signed { got as i8 as i32 } else { got as i32 };
            assert_eq!(got, want, "x = {x} at 1/scale {inverse_scale}");
        }
    }
}

/// A finite but huge input (a broken sensor's 1e10) saturates at the input's
/// quantization like any value past its ends: the engine's own `QuantizeLinear`
/// overflows there when the zero point is not 0 (R3's is 121: a panic in a debug
/// build, a wrapped byte in a release one).
#[test]
fn a_huge_finite_input_saturates_instead_of_overflowing() {
    let model = load(
        &models().join("anomaly-ae/model.qdq.onnx"),
        &LoadOptions::new(),
    );
    let run = |x: &[f32]| {
        let out = model.run(&[Input::f32(&[1, 640], x)]).unwrap();
        out.f32(0).unwrap().to_vec()
    };
    // The input's quantization holds about -2.9 ..= 3.3: ±10 saturates too.
    let mut huge: Vec<f32> = (0..640).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    let mut ends = huge.clone();
    (huge[3], huge[40]) = (1e10, -1e10);
    (ends[3], ends[40]) = (10.0, -10.0);
    assert_eq!(run(&huge), run(&ends));
}
