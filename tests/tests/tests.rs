//! Integration tests across crates, one module per capability.

mod reference_models {
    use perch_runtime::engine::{Dim, Golden, LoadOptions, Model, Tolerance};
    use perch_tests::{models_dir, reference_models};

    fn dir_size(path: &std::path::Path) -> u64 {
        std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    dir_size(&p)
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }

    #[test]
    fn the_catalog_lists_the_four_reference_workloads() {
        let ids: Vec<String> = reference_models()
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["R1", "R2", "R3", "R4"]);
    }

    #[test]
    fn every_model_loads_with_the_inputs_and_outputs_its_generator_declared() {
        for m in reference_models().unwrap() {
            for file in ["model.onnx", "model.w8.onnx"] {
                let model = Model::load(m.dir().join(file), &LoadOptions::new())
                    .unwrap_or_else(|e| panic!("{}/{file}: {e}", m.name));
                let meta = model.metadata();
                for (declared, actual) in [(&m.inputs, &meta.inputs), (&m.outputs, &meta.outputs)] {
                    assert_eq!(declared.len(), actual.len(), "{}", m.name);
                    for (d, a) in declared.iter().zip(actual.iter()) {
                        assert_eq!(d.name, a.name, "{}", m.name);
                        let shape: Vec<serde_json::Value> = a
                            .shape
                            .iter()
                            .map(|dim| match dim {
                                Dim::Fixed(n) => serde_json::json!(n),
                                Dim::Symbolic(s) => serde_json::json!(s),
                            })
                            .collect();
                        assert_eq!(d.shape, shape, "{} {}", m.name, d.name);
                    }
                }
            }
        }
    }

    #[test]
    fn weight_only_int8_files_are_more_than_2_3_times_smaller_than_float() {
        for m in reference_models().unwrap() {
            let float = std::fs::metadata(m.dir().join("model.onnx")).unwrap().len();
            let w8 = std::fs::metadata(m.dir().join("model.w8.onnx"))
                .unwrap()
                .len();
            assert_eq!(
                (float, w8),
                (m.float_bytes, m.w8_bytes),
                "{}: catalog is stale",
                m.name
            );
            let ratio = float as f64 / w8 as f64;
            assert!(ratio > 2.3, "{}: float/w8 = {ratio:.2}", m.name);
        }
    }

    #[test]
    fn the_models_folder_stays_under_6_5_mb() {
        let size = dir_size(&models_dir());
        assert!(size < 6_500_000, "models/ is {size} bytes");
    }

    #[test]
    fn a_session_reused_across_models_inputs_keeps_matching_the_goldens() {
        // Many runs through one session: the reused input tensors must not leak state.
        for m in reference_models().unwrap() {
            let model = Model::load(m.dir().join("model.onnx"), &LoadOptions::new()).unwrap();
            let golden = Golden::load(m.dir().join("golden")).unwrap();
            let mut session = model.session().unwrap();
            let zeros: Vec<Vec<f32>> = golden.inputs.iter().map(|t| vec![0.0; t.len()]).collect();
            for _ in 0..3 {
                let other: Vec<_> = golden
                    .inputs
                    .iter()
                    .zip(&zeros)
                    .map(|(t, z)| perch_runtime::engine::Input::f32(t.shape(), z))
                    .collect();
                session.run(&other).unwrap();
                session.self_test(&golden, Tolerance::default()).unwrap();
            }
        }
    }
}
