#![cfg(feature = "onnx")]
//! Perch's kernel layer inside the engine: which nodes it takes, that they compute what
//! tract's own operators and ONNX Runtime compute, that archives carry them, and that
//! it can be turned off. `.ci/arm` also runs these under qemu, where
//! `PERCH_EXPECT_KERNELS` names the board's kernel family.

use std::path::{Path, PathBuf};

use perch_runtime::engine::internal::{nnef_framework, ops, ModelExt};
use perch_runtime::engine::{
    compare, read_npy, Array, Golden, KernelNode, LoadOptions, Model, Tolerance,
};
use perch_runtime::kernels::Cpu;
use tract_onnx::prelude::{Framework, InferenceModelExt};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn load(path: &Path, options: &LoadOptions) -> Model {
    Model::load(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a model on a reference model's golden input; the first output.
fn run_golden(model: &Model, name: &str) -> Array {
    let golden = Golden::load(models().join(name).join("golden")).unwrap();
    let out = model
        .session()
        .unwrap()
        .run(&golden.input_refs().unwrap())
        .unwrap();
    Array::from_view(out.view(0).unwrap())
}

/// The suffix of the Perch kernels the emulated board must run (`.ci/arm` sets
/// PERCH_EXPECT_KERNELS to tract's family for it), or this CPU's best.
fn expected_suffix() -> Option<&'static str> {
    match std::env::var("PERCH_EXPECT_KERNELS").as_deref() {
        Ok(f) if f.starts_with("arm64") => Some("_neon"),
        Ok(f) if f.starts_with("armv7") => Some("_neon32"),
        _ => match Cpu::detect().best() {
            perch_runtime::kernels::Isa::Portable => None,
            isa => Some(match isa.name() {
                "neon" | "dotprod" => "_neon",
                // The float kernels' widest x86 variant; VNNI is for 8-bit ones.
                "avxvnni" => "_avx2",
                "neon32" => "_neon32",
                other => Box::leak(format!("_{other}").into_boxed_str()),
            }),
        },
    }
}

#[test]
fn every_depthwise_layer_of_r2_and_r4_runs_on_a_perch_kernel_written_for_this_cpu() {
    println!("CPU as Perch sees it: {}", Cpu::detect());
    for (name, layers) in [("kws-dscnn", 4), ("mobilenetv2-035", 17)] {
        let model = load(&models().join(name).join("model.onnx"), &LoadOptions::new());
        let kernels = &model.metadata().kernels;
        let names: Vec<&str> = kernels.iter().filter_map(|k| k.kernel.as_deref()).collect();
        println!("{name}: {}", names.join(" "));
        assert_eq!(kernels.len(), layers, "{name}: {kernels:?}");
        assert!(
            kernels.iter().all(KernelNode::is_planned),
            "{name}: {kernels:?}"
        );
        // Batch normalization and the activation after each layer are fused into it.
        assert!(
            kernels.iter().all(|k| k.fused.len() >= 3),
            "{name}: {kernels:?}"
        );
        if let Some(suffix) = expected_suffix() {
            assert!(
                names.iter().all(|n| n.ends_with(suffix)),
                "{name}: expected *{suffix} kernels, planned {names:?}"
            );
        }
        let plan = model.optimized_model();
        let ops = plan
            .nodes()
            .iter()
            .filter(|n| n.op.name() == "PerchDwConv")
            .count();
        assert_eq!(ops, layers, "{name}: PerchDwConv nodes in the plan");
    }
}

#[test]
fn perch_kernels_agree_with_tracts_own_operators_within_1e_5() {
    for name in ["kws-dscnn", "mobilenetv2-035"] {
        let path = models().join(name).join("model.onnx");
        let perch = run_golden(&load(&path, &LoadOptions::new().perch_kernels(true)), name);
        let tract = run_golden(&load(&path, &LoadOptions::new().perch_kernels(false)), name);
        let (_, relative) = compare(perch.view(), tract.view()).unwrap();
        assert!(relative <= 1e-5, "{name}: {relative:e}");
        // ... and both with ONNX Runtime, as the golden tests require.
        let golden = Golden::load(models().join(name).join("golden")).unwrap();
        let (_, relative) = compare(perch.view(), golden.outputs[0].view()).unwrap();
        assert!(
            relative <= Tolerance::default().relative,
            "{name}: {relative:e}"
        );
    }
}

#[test]
fn turning_the_pass_off_leaves_every_node_on_tracts_operators() {
    let path = models().join("mobilenetv2-035/model.onnx");
    let model = load(&path, &LoadOptions::new().perch_kernels(false));
    assert!(!model.metadata().kernel_pass);
    assert!(model.metadata().kernels.is_empty());
    let plan = model.optimized_model();
    assert!(plan
        .nodes()
        .iter()
        .all(|n| !n.op.name().starts_with("Perch")));
    assert!(plan.nodes().iter().any(|n| n.op.name() == "DepthWiseConv"));
}

/// models/fixtures/depthwise-variants.onnx: one input, a branch per case (see
/// models/generate.py, DEPTHWISE_BRANCHES), ONNX Runtime's outputs beside it.
#[test]
fn covered_depthwise_convolutions_run_on_perch_kernels_and_the_others_say_why() {
    let dir = models().join("fixtures");
    let model = load(&dir.join("depthwise-variants.onnx"), &LoadOptions::new());
    let by_node = |name: &str| -> KernelNode {
        model
            .metadata()
            .kernels
            .iter()
            .find(|k| k.node == name)
            .unwrap_or_else(|| panic!("{name} not considered: {:?}", model.metadata().kernels))
            .clone()
    };
    let declined = [
        ("dilated", "dilation (the kernel has none)"),
        ("k7", "7x7 filter (the kernels cover 3x3 and 5x5)"),
        ("stride3", "stride 3 (the kernels cover 1 and 2)"),
        (
            "grouped",
            "2 groups of 4 input and 4 output channels (the kernel takes one of each)",
        ),
        (
            "multiplier2",
            "8 groups of 1 input and 2 output channels (the kernel takes one of each)",
        ),
    ];
    for (node, reason) in declined {
        let k = by_node(node);
        assert_eq!(k.kernel, None, "{node}");
        assert_eq!(k.reason.as_deref(), Some(reason), "{node}");
    }
    let relu = by_node("k5s2_asym_relu");
    assert!(relu.is_planned(), "{relu:?}");
    // tract names the max(x, 0) it declutters ReLU into after the ONNX node.
    assert_eq!(relu.fused, vec!["k5s2_asym_relu.relu.low".to_string()]);
    assert!(relu.detail.contains("pad 2,1,1,2"), "{relu:?}");
    assert!(by_node("k3s1_asym").is_planned());

    let input = read_npy(dir.join("depthwise-variants.input_0.npy")).unwrap();
    let outputs = model
        .session()
        .unwrap()
        .run(&[input.input().unwrap()])
        .unwrap();
    for i in 0..outputs.len() {
        let want = read_npy(dir.join(format!("depthwise-variants.output_{i}.npy"))).unwrap();
        let (_, relative) = compare(outputs.view(i).unwrap(), want.view()).unwrap();
        assert!(relative <= 1e-5, "output {i}: {relative:e}");
    }
}

/// The decluttered model rewritten with Perch's operators, as `perch convert` writes it.
fn archive_with_perch_ops(source: &Path) -> Vec<u8> {
    let typed = tract_onnx::onnx()
        .model_for_path(source)
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .unwrap();
    let (typed, _) = ops::rewrite(typed, Cpu::detect()).unwrap();
    let mut tar = vec![];
    nnef_framework().write_to_tar(&typed, &mut tar).unwrap();
    tar
}

#[test]
fn an_nnef_archive_carries_perch_operators_that_any_build_plans_for_its_own_cpu() {
    let tar = archive_with_perch_ops(&models().join("mobilenetv2-035/model.onnx"));
    let graph = tar_entry(&tar, "graph.nnef");
    assert!(graph.contains("extension tract_registry perch;"));
    assert_eq!(graph.matches("perch_dwconv(").count(), 17);
    for options in [LoadOptions::new(), LoadOptions::new().perch_kernels(false)] {
        // Operators the archive holds stay, even with the pass off.
        let model = Model::from_nnef_bytes(&tar, &options).unwrap();
        let kernels = &model.metadata().kernels;
        assert_eq!(kernels.len(), 17);
        assert!(kernels.iter().all(KernelNode::is_planned));
        let golden = Golden::load(models().join("mobilenetv2-035/golden")).unwrap();
        model
            .session()
            .unwrap()
            .self_test(&golden, Tolerance::default())
            .unwrap();
    }
}

fn tar_entry(tar: &[u8], name: &str) -> String {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(name) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            return text;
        }
    }
    panic!("no {name} in the archive")
}

/// The archive with `graph.nnef` replaced by `edit(graph.nnef)`.
fn with_graph(tar: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_path_buf();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_str() == Some("graph.nnef") {
            data = edit(std::str::from_utf8(&data).unwrap()).into_bytes();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, &path, &*data).unwrap();
    }
    out.into_inner().unwrap()
}

#[test]
fn a_tampered_perch_operator_in_an_archive_is_refused_with_the_reason_not_a_panic() {
    let tar = archive_with_perch_ops(&models().join("kws-dscnn/model.onnx"));
    let cases: [(&str, &str, &str); 5] = [
        (
            "activation = \"relu\"",
            "activation = \"gelu\"",
            "unknown activation \"gelu\"",
        ),
        ("kernel = [3, 3]", "kernel = [7, 7]", "7x7 filter"),
        ("stride = 1", "stride = 0", "empty geometry"),
        (
            "padding = [1, 1, 1, 1]",
            "padding = [1, 1]",
            "must have 2 and 4 values",
        ),
        ("kernel = [3, 3]", "kernel = [5, 5]", "filters of 5x5"),
    ];
    for (from, to, reason) in cases {
        assert!(tar_entry(&tar, "graph.nnef").contains(from), "{from}");
        let bad = with_graph(&tar, |g| g.replacen(from, to, 1));
        let err = Model::from_nnef_bytes(&bad, &LoadOptions::new())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{to}: {err}");
    }
}

/// models/fixtures/depthwise-nhwc.onnx: transposes from and to channels last around two
/// depthwise convolutions, which tract's declutter turns into channels-last convolutions
/// on every platform (on aarch64 it does so for R2 and R4 too).
#[test]
fn a_channels_last_model_runs_on_the_channels_last_kernels_and_matches_onnx_runtime() {
    let dir = models().join("fixtures");
    let model = load(&dir.join("depthwise-nhwc.onnx"), &LoadOptions::new());
    let kernels = &model.metadata().kernels;
    assert_eq!(kernels.len(), 2, "{kernels:?}");
    for k in kernels {
        let name = k.kernel.as_deref().unwrap_or_else(|| panic!("{k:?}"));
        assert!(name.starts_with("f32_dwconv_hwc_3x3s"), "{name}");
        assert!(k.detail.starts_with("HWC 24 ch"), "{k:?}");
    }
    let input = read_npy(dir.join("depthwise-nhwc.input_0.npy")).unwrap();
    let want = read_npy(dir.join("depthwise-nhwc.output_0.npy")).unwrap();
    for options in [LoadOptions::new(), LoadOptions::new().perch_kernels(false)] {
        let model = load(&dir.join("depthwise-nhwc.onnx"), &options);
        let out = model
            .session()
            .unwrap()
            .run(&[input.input().unwrap()])
            .unwrap();
        let (_, relative) = compare(out.view(0).unwrap(), want.view()).unwrap();
        assert!(relative <= 1e-5, "{relative:e}");
    }
}
