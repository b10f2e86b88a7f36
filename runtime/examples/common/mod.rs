//! What the engine examples (`count`, `latency`) share. Not an example itself: each
//! includes it with `mod common;`.

use std::path::Path;

/// `models/kws-dscnn/model.w8.onnx` is (`kws-dscnn`, `w8`); `model.onnx` and
/// `model.nnef.tgz` are `float`.
pub fn names(path: &Path) -> (String, String) {
    let model = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [
        ".onnx",
        ".nnef.tgz",
        ".nnef.tar",
        ".tar.gz",
        ".tgz",
        ".tar",
        ".nnef",
    ]
    .iter()
    .find_map(|ext| file.strip_suffix(ext))
    .unwrap_or(&file);
    let variant = match stem.split_once('.') {
        Some((_, v)) => v.to_string(),
        None => "float".to_string(),
    };
    (model, variant)
}
