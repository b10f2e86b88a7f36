//! Signing keys as small text files, and key ids.
//!
//! A key file is UTF-8 text: comment lines starting with `#`, blank lines, and exactly
//! one line of 64 hex digits: the 32-byte ed25519 seed (secret key) or public key.
//! [`signing_key_file`] and [`verifying_key_file`] write a first comment line saying
//! which of the two the file holds, so passing one where the other is expected is
//! caught; a bare hex line without comments is accepted as either.

use std::io::Read;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::error::BundleError;

/// The header line of secret key files.
const SECRET_HEADER: &str = "# perch ed25519 secret key";
/// The header line of public key files.
const PUBLIC_HEADER: &str = "# perch ed25519 public key";
/// Key files are tiny; anything larger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// A key's id: the first 8 bytes of SHA-256 over its 32 public key bytes, as 16
/// lower-case hex digits. Manifests name their signer by it.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// `text` signed with `key` as the signed envelopes on the broker carry it (rollout
/// documents, rollout and repository commands): the signer's [`key_id`] and the ed25519
/// signature over the text's bytes, as 128 hex digits.
pub fn sign_text(key: &SigningKey, text: &str) -> (String, String) {
    let signature = key.sign(text.as_bytes());
    (
        key_id(&key.verifying_key()),
        hex::encode(signature.to_bytes()),
    )
}

/// Why an envelope's signature was refused by [`verify_text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSignatureError {
    /// No trusted key has the envelope's key id.
    UnknownKey,
    /// The signature is not 64 bytes of hex.
    NotHex,
    /// The signature does not verify (strictly) with the key.
    DoesNotVerify,
}

/// Checks an envelope's `signature` (128 hex digits) over `text` with the key of
/// `trusted` whose id is `key_id`, strictly (ed25519's `verify_strict`): the check of
/// every [`sign_text`] envelope.
///
/// # Errors
///
/// The key is not trusted, or the signature is not hex of the right length or does not
/// verify.
pub fn verify_text(
    trusted: &[VerifyingKey],
    key_id_: &str,
    signature: &str,
    text: &str,
) -> Result<(), TextSignatureError> {
    let key = trusted
        .iter()
        .find(|k| key_id(k) == key_id_)
        .ok_or(TextSignatureError::UnknownKey)?;
    let bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TextSignatureError::NotHex)?;
    key.verify_strict(text.as_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| TextSignatureError::DoesNotVerify)
}

/// The text of a secret key file for `key`: a header comment, the key id, the hex seed.
pub fn signing_key_file(key: &SigningKey) -> String {
    format!(
        "{SECRET_HEADER} (hex seed). Keep it private: it signs model bundles.\n# key id {}\n{}\n",
        key_id(&key.verifying_key()),
        hex::encode(key.to_bytes())
    )
}

/// The text of a public key file for `key`: a header comment, the key id, the hex key.
pub fn verifying_key_file(key: &VerifyingKey) -> String {
    format!(
        "{PUBLIC_HEADER}: devices trust bundles it verifies.\n# key id {}\n{}\n",
        key_id(key),
        hex::encode(key.as_bytes())
    )
}

/// Parses the text of a secret key file ([`signing_key_file`]'s format).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, BundleError> {
    if text.trim_start().starts_with(PUBLIC_HEADER) {
        return Err(bad(
            "this is a public key file; signing needs the secret key file".into(),
        ));
    }
    Ok(SigningKey::from_bytes(&key_bytes(text)?))
}

/// Parses the text of a public key file ([`verifying_key_file`]'s format), or a bare
/// line of 64 hex digits.
///
/// Refuses bytes that are not a point on the curve and weak (small-order) keys, under
/// which forged signatures would verify.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, BundleError> {
    if text.trim_start().starts_with(SECRET_HEADER) {
        return Err(bad(
            "this is a secret key file; verification needs the public key file (.pub)".into(),
        ));
    }
    let key = VerifyingKey::from_bytes(&key_bytes(text)?)
        .map_err(|_| bad("the 32 bytes are not a valid ed25519 public key".into()))?;
    if key.is_weak() {
        return Err(bad("the key is a weak (small-order) ed25519 key".into()));
    }
    Ok(key)
}

/// Reads a secret key file.
pub fn read_signing_key(path: impl AsRef<Path>) -> Result<SigningKey, BundleError> {
    let path = path.as_ref();
    parse_signing_key(&read_key_text(path)?).map_err(|e| in_file(path, e))
}

/// Reads a public key file.
pub fn read_verifying_key(path: impl AsRef<Path>) -> Result<VerifyingKey, BundleError> {
    let path = path.as_ref();
    parse_verifying_key(&read_key_text(path)?).map_err(|e| in_file(path, e))
}

fn read_key_text(path: &Path) -> Result<String, BundleError> {
    let io = |error| BundleError::Io {
        path: path.into(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(in_file(
            path,
            bad(format!("larger than {MAX_KEY_FILE} bytes: not a key file")),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| in_file(path, bad("not UTF-8 text: not a key file".into())))
}

fn key_bytes(text: &str) -> Result<[u8; 32], BundleError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| bad("no key line (64 hex digits) found".into()))?;
    if lines.next().is_some() {
        return Err(bad("more than one key line".into()));
    }
    if line.len() != 64 {
        return Err(bad(format!(
            "the key line has {} characters; a key is 64 hex digits",
            line.chars().count()
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(line, &mut out)
        .map_err(|e| bad(format!("the key line is not hex ({e})")))?;
    Ok(out)
}

fn bad(reason: String) -> BundleError {
    BundleError::BadKey { reason }
}

fn in_file(path: &Path, e: BundleError) -> BundleError {
    match e {
        BundleError::BadKey { reason } => BundleError::KeyFile {
            path: path.into(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn key_files_round_trip() {
        let key = key();
        let secret = parse_signing_key(&signing_key_file(&key)).unwrap();
        assert_eq!(secret.to_bytes(), key.to_bytes());
        let public = parse_verifying_key(&verifying_key_file(&key.verifying_key())).unwrap();
        assert_eq!(public, key.verifying_key());
    }

    #[test]
    fn the_key_id_is_the_first_eight_bytes_of_the_public_key_hash() {
        // RFC 8032 test 1 public key; its SHA-256 computed with `sha256sum`.
        let public: [u8; 32] =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap()
                .try_into()
                .unwrap();
        let key = VerifyingKey::from_bytes(&public).unwrap();
        assert_eq!(key_id(&key), KEY_ID_RFC8032_1);
    }

    /// First 16 hex digits of `sha256sum` over the RFC 8032 test 1 public key bytes.
    pub(crate) const KEY_ID_RFC8032_1: &str = "21fe31dfa154a261";

    #[test]
    fn swapping_secret_and_public_key_files_is_caught() {
        let key = key();
        let err = parse_verifying_key(&signing_key_file(&key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret key file"), "{err}");
        let err = parse_signing_key(&verifying_key_file(&key.verifying_key()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("public key file"), "{err}");
    }

    #[test]
    fn malformed_key_text_names_the_problem() {
        for (text, says) in [
            ("", "no key line"),
            ("# only a comment\n", "no key line"),
            ("abcd\n", "has 4 characters"),
            (&"zz".repeat(32), "not hex"),
            (
                &format!("{}\n{}\n", "00".repeat(32), "00".repeat(32)),
                "more than one",
            ),
        ] {
            let err = parse_signing_key(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_weak_public_key_is_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let err = parse_verifying_key(&hex::encode(identity))
            .unwrap_err()
            .to_string();
        assert!(err.contains("weak"), "{err}");
    }

    #[test]
    fn reading_a_key_file_names_the_file_in_errors() {
        let dir = std::env::temp_dir().join(format!("perch-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broken.pub");
        std::fs::write(&path, "not a key\n").unwrap();
        let err = read_verifying_key(&path).unwrap_err();
        assert!(matches!(err, BundleError::KeyFile { .. }), "{err}");
        assert!(err.to_string().contains("broken.pub"), "{err}");
        let missing = read_verifying_key(dir.join("missing.pub")).unwrap_err();
        assert!(matches!(missing, BundleError::Io { .. }), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
