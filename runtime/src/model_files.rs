//! What a model file's name and first bytes say about it: whether it is a signed
//! bundle, and which golden outputs a plain model file is checked against.
//!
//! ```
//! use std::path::Path;
//! use perch_runtime::model_files::golden_variant;
//!
//! assert_eq!(golden_variant(Path::new("models/r2/model.w8.onnx")).as_deref(), Some("w8"));
//! assert_eq!(golden_variant(Path::new("models/r2/model.onnx")), None);
//! ```

use std::io::Read;
use std::path::Path;

use crate::bundle;

/// Whether `path` is a signed bundle: a file named `*.perch` (any letter case), or a
/// file whose first tar header is `manifest.json` ([`bundle::is_bundle`]; NNEF
/// archives are tars too, but never start with a manifest). A missing file or a
/// folder is not.
pub fn is_bundle_file(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    let named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(bundle::EXTENSION));
    if named {
        return true;
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .is_ok_and(|_| bundle::is_bundle(&head))
}

/// The golden-output variant a plain model file pairs with, from its name:
/// `model.w8.onnx` and `model.w8.nnef.tgz` → `w8` (their outputs are
/// `output_N.w8.npy`); `None` for `model.onnx` or another kind of file.
pub fn golden_variant(model: &Path) -> Option<String> {
    let name = model.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".onnx")
        .or_else(|| name.strip_suffix(".nnef.tgz"))?;
    let (_, variant) = stem.split_once('.')?;
    Some(variant.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_is_the_suffix_between_the_stem_and_the_format() {
        let v = |p: &str| golden_variant(Path::new(p));
        assert_eq!(v("m/model.w8.onnx").as_deref(), Some("w8"));
        assert_eq!(v("m/model.w8.nnef.tgz").as_deref(), Some("w8"));
        assert_eq!(v("m/model.onnx"), None);
        assert_eq!(v("m/model.nnef.tgz"), None);
        assert_eq!(v("m/model.w8.perch"), None);
    }

    #[test]
    fn bundles_are_told_by_name_or_by_their_first_header() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("x.PERCH");
        std::fs::write(&named, b"anything").unwrap();
        assert!(is_bundle_file(&named));
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kws-dscnn/model.onnx");
        assert!(!is_bundle_file(&model));
        assert!(!is_bundle_file(&dir.path().join("missing.perch")));
        assert!(!is_bundle_file(dir.path()));
    }
}
