//! The feature schema travels in the signed manifest and is checked with it.

use super::*;

/// R1 (digits-mlp, `[N, 64]` → `[N, 10]`) described as 60 numeric features and one
/// categorical feature of 4 categories: 64 columns.
fn schema() -> FeatureSchema {
    let mut features: Vec<Feature> = (0..60)
        .map(|i| Feature::Numeric {
            name: format!("p{i}"),
            mean: 0.25,
            std: 0.5,
        })
        .collect();
    features.push(Feature::Categorical {
        name: "corner".into(),
        categories: ["a", "b", "c", "d"].map(String::from).to_vec(),
    });
    FeatureSchema {
        features,
        labels: (0..10).map(|i| format!("digit {i}")).collect(),
    }
}

fn r1(schema: Option<FeatureSchema>) -> BundleContents {
    let dir = models().join("digits-mlp");
    let batch = ShapeDim::Symbolic("N".into());
    BundleContents {
        name: "digits".into(),
        model: read(dir.join("model.onnx")),
        signature: TensorSignature {
            inputs: vec![spec("pixels", "f32", &[batch.clone(), ShapeDim::Fixed(64)])],
            outputs: vec![spec("probabilities", "f32", &[batch, ShapeDim::Fixed(10)])],
        },
        golden_inputs: vec![read(dir.join("golden/input_0.npy"))],
        golden_outputs: vec![read(dir.join("golden/output_0.npy"))],
        schema,
        ..r2()
    }
}

fn r1_bytes() -> Vec<u8> {
    pack(&r1(Some(schema())), &key(1))
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[test]
fn a_schema_is_signed_with_the_manifest_and_comes_back_verified() {
    let verified = parse(&r1_bytes())
        .unwrap()
        .verify(&[key(1).verifying_key()])
        .unwrap();
    assert_eq!(verified.manifest().schema, Some(schema()));
    let json: serde_json::Value = serde_json::from_slice(verified.manifest_bytes()).unwrap();
    assert_eq!(json["schema"]["features"][60]["type"], "categorical");
    assert_eq!(json["schema"]["features"][0]["std"], 0.5);
}

#[test]
fn a_bundle_without_a_schema_writes_no_schema_field() {
    let bundle = pack(&r1(None), &key(1)).unwrap();
    let json: serde_json::Value = serde_json::from_slice(bundle.manifest_bytes()).unwrap();
    assert!(json.get("schema").is_none(), "{json}");
    assert_eq!(json["format"], 1);
    let verified = bundle.verify(&[key(1).verifying_key()]).unwrap();
    assert_eq!(verified.manifest().schema, None);
}

#[test]
fn a_schema_edited_after_signing_fails_the_signature() {
    let bytes = edit_manifest(&r1_bytes(), |m| {
        m["schema"]["features"][0]["mean"] = 100.into();
    });
    let err = parse(&bytes)
        .expect("the edited schema still follows the rules")
        .verify(&[key(1).verifying_key()])
        .unwrap_err();
    assert!(matches!(err, BundleError::SignatureInvalid { .. }), "{err}");
    let bytes = edit_manifest(&r1_bytes(), |m| {
        m["schema"]["labels"][0] = "seven".into();
    });
    let err = parse(&bytes)
        .unwrap()
        .verify(&[key(1).verifying_key()])
        .unwrap_err();
    assert!(matches!(err, BundleError::SignatureInvalid { .. }), "{err}");
}

#[test]
fn a_schema_that_breaks_a_rule_is_refused_before_the_signature_naming_the_rule() {
    use serde_json::json;
    let numeric = |name: &str| json!({"name": name, "type": "numeric"});
    let ten_thousand: Vec<_> = (0..10_000).map(|i| numeric(&format!("f{i}"))).collect();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|m| m["schema"]["features"][0]["std"] = 0.into()),
            "feature \"p0\" needs a finite mean and a finite std > 0",
        ),
        (
            Box::new(|m| m["schema"]["features"][1]["name"] = "p0".into()),
            "feature \"p0\" is listed twice",
        ),
        (
            Box::new(|m| m["schema"]["features"][60]["categories"][1] = "a".into()),
            "lists category \"a\" twice",
        ),
        (
            Box::new(|m| m["schema"]["features"][0]["scale"] = 1.into()),
            "unknown field `scale`",
        ),
        (
            Box::new(|m| m["schema"]["features"][0]["type"] = "text".into()),
            "unknown variant `text`",
        ),
        (
            Box::new(|m| m["schema"]["features"][0]["name"] = "a\nb".into()),
            "without control characters",
        ),
        (
            Box::new(|m| m["schema"]["labels"] = json!(["only"])),
            "1 labels (2 to 1024 are allowed)",
        ),
        (
            Box::new(move |m| m["schema"]["features"] = json!(ten_thousand.clone())),
            "10000 features (1 to 1024 are allowed)",
        ),
        (
            Box::new(|m| {
                m["schema"]["features"][60]["categories"] = json!(["a", "b", "c"]);
            }),
            "the features fill a row of 63 f32 columns, but the model's input \"pixels\" \
             is f32 [N, 64]",
        ),
        (
            Box::new(|m| m["schema"]["labels"] = json!(["x", "y", "z"])),
            "3 labels, but no f32 output of the model has 3 values per row",
        ),
    ];
    for (edit, says) in cases {
        let bytes = edit_manifest(&r1_bytes(), edit);
        let err = parse(&bytes).unwrap_err();
        // Fields serde does not know are the manifest's JSON errors; rules are the schema's.
        assert!(
            matches!(
                err,
                BundleError::BadSchema { .. } | BundleError::BadManifest { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
}

#[test]
fn a_schema_that_does_not_fit_the_model_is_refused_at_pack_time() {
    let mut narrow = schema();
    narrow.features.pop();
    let err = pack(&r1(Some(narrow)), &key(1)).unwrap_err();
    assert!(matches!(err, BundleError::Pack { .. }), "{err}");
    assert!(err.to_string().contains("row of 60 f32 columns"), "{err}");
    let mut bad_std = schema();
    bad_std.features[3] = Feature::Numeric {
        name: "p3".into(),
        mean: 0.0,
        std: f64::NAN,
    };
    let err = pack(&r1(Some(bad_std)), &key(1)).unwrap_err();
    assert!(err.to_string().contains("finite std > 0"), "{err}");
}

#[test]
fn a_feature_is_found_with_its_first_column() {
    let schema = schema();
    assert_eq!(schema.width(), 64);
    assert_eq!(schema.find("p3").map(|(_, c)| c), Some(3));
    assert_eq!(
        schema.find("corner").map(|(f, c)| (f.width(), c)),
        Some((4, 60))
    );
    assert!(schema.find("nope").is_none());
}
