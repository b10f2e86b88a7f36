//! Commands to one device's model repository over MQTT: load and unload a model, and
//! list the repository, the same commands as the Open Inference Protocol's repository
//! extension over HTTP.
//!
//! Loading and unloading change what a device serves, so they travel signed, like
//! rollout documents: a [`SignedCommand`] holds the exact JSON text of a
//! [`RepositoryCommand`], the signer's key id and an ed25519 signature over that text,
//! verified strictly against the device's trusted keys (the fleet key that signs
//! bundles and rollout documents). A command names the device it is for, so it cannot
//! be replayed to another device, and carries a revision the device must not have seen
//! (the operator's clock in milliseconds): the device keeps the highest it accepted, on
//! disk, and refuses any command at or below it, so a command recorded off the broker
//! and published again does nothing. Listing the repository changes nothing and may
//! also be asked unsigned, as `{"action": "index", "id": ...}`.
//!
//! | topic | from → to | QoS | payload |
//! |---|---|---|---|
//! | `perch/{device}/repository/req` | operator → device | 1 | [`SignedCommand`] JSON, or an unsigned index request |
//! | `perch/{device}/repository/res` | device → operator | 0 | `{"id", "status", "error"?, "models"}` |
//!
//! ```
//! use perch_runtime::bundle::SigningKey;
//! use perch_runtime::repository_command::{Action, RepositoryCommand};
//!
//! let key = SigningKey::from_bytes(&[7; 32]);
//! let command = RepositoryCommand::new(Action::Unload, "pi-1", Some("iris"), 1_790_000_000_000);
//! let payload = command.sign(&key);
//! let verified = RepositoryCommand::verify(&payload, &[key.verifying_key()]).unwrap();
//! assert_eq!(verified, command);
//! ```

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::bundle::{sign_text, verify_text, TextSignatureError};

/// The largest command payload read, in bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// What a command asks of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Load a configured model, or the signed bundle at `path` under the model's name.
    Load,
    /// Unload a model (requests in flight finish first).
    Unload,
    /// List the repository (needs no signature).
    Index,
}

impl Action {
    /// The action as written in commands.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Load => "load",
            Action::Unload => "unload",
            Action::Index => "index",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command to one device's repository, as the operator signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryCommand {
    /// What to do.
    pub action: Action,
    /// The device the command is for; any other device refuses it.
    pub device: String,
    /// The model loaded or unloaded (required for both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Load only: a signed bundle on the device to load under `model`'s name (as
    /// `{"parameters": {"path": ...}}` over HTTP); absent, the configured model loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Higher than every revision the device accepted before (the operator's clock in
    /// milliseconds): lower or equal ones are replays.
    pub revision: u64,
    /// A correlation id, echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The signed envelope of an operator's command on the wire, `{"key_id", "signature",
/// "command"}`: a [`RepositoryCommand`] here, and a rollout command (pause, resume,
/// abort, promote) on `perch/fleet/{group}/rollout/command` (`perch rollout`), signed
/// with the same fleet key ([`sign_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    /// The signer's key id ([`key_id`](crate::bundle::key_id)).
    pub key_id: String,
    /// The ed25519 signature over the exact bytes of `command`, 128 hex digits.
    pub signature: String,
    /// The command as JSON text.
    pub command: String,
}

/// An unsigned request: only [`Action::Index`] is accepted this way.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainRequest {
    action: Action,
    #[serde(default)]
    id: Option<String>,
}

/// A request read off `repository/req`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A command whose signature verified (its device and revision still to check).
    Signed(RepositoryCommand),
    /// An unsigned index request, with its correlation id.
    Index {
        /// The correlation id.
        id: Option<String>,
    },
}

/// Why a repository request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Larger than [`MAX_COMMAND_BYTES`].
    #[error("the command is {0} bytes; at most {MAX_COMMAND_BYTES} are accepted")]
    TooLarge(usize),
    /// Not the JSON of a command or an index request.
    #[error("malformed repository command: {0}")]
    Malformed(String),
    /// A load or unload without a signature.
    #[error(
        "{0} commands must be signed by a trusted key ({{\"key_id\", \"signature\", \"command\"}})"
    )]
    Unsigned(Action),
    /// No trusted key has the signer's key id.
    #[error("the command is signed by key {0}, which is not a trusted key")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the command's signature does not verify with key {0}")]
    BadSignature(String),
    /// Signed, but breaks a rule.
    #[error("invalid repository command: {0}")]
    Invalid(String),
}

impl RepositoryCommand {
    /// A command without a path or id.
    pub fn new(action: Action, device: &str, model: Option<&str>, revision: u64) -> Self {
        RepositoryCommand {
            action,
            device: device.to_string(),
            model: model.map(str::to_string),
            path: None,
            revision,
            id: None,
        }
    }

    /// The command signed with `key`, as published.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        let command = serde_json::to_string(self).unwrap_or_default();
        let (key_id, signature) = sign_text(key, &command);
        let signed = SignedCommand {
            key_id,
            signature,
            command,
        };
        serde_json::to_vec(&signed).unwrap_or_default()
    }

    /// Reads a signed command and checks its signature against `trusted` and its
    /// shape (a model for load and unload, a path only for load).
    ///
    /// # Errors
    ///
    /// Too large, malformed, unsigned, signed by an unknown key, a bad signature, or a
    /// command breaking a rule.
    pub fn verify(payload: &[u8], trusted: &[VerifyingKey]) -> Result<Self, CommandError> {
        match Request::read(payload, trusted)? {
            Request::Signed(command) => Ok(command),
            Request::Index { .. } => Err(CommandError::Malformed(
                "an unsigned index request, not a signed command".into(),
            )),
        }
    }

    fn validate(&self) -> Result<(), CommandError> {
        let invalid = |m: String| CommandError::Invalid(m);
        match (self.action, &self.model, &self.path) {
            (Action::Load | Action::Unload, None, _) => Err(invalid(format!(
                "the {} command names no model",
                self.action
            ))),
            (Action::Unload | Action::Index, _, Some(_)) => Err(invalid(format!(
                "a path is only for a load, not for {}",
                self.action
            ))),
            (_, Some(model), _) if model.is_empty() || model.len() > 64 => Err(invalid(format!(
                "model name {model:?} is not 1 to 64 bytes"
            ))),
            _ => Ok(()),
        }
    }
}

impl Request {
    /// Reads a request: a signed command (verified against `trusted`) or an unsigned
    /// index request.
    ///
    /// # Errors
    ///
    /// As [`RepositoryCommand::verify`]; an unsigned load or unload is
    /// [`CommandError::Unsigned`].
    pub fn read(payload: &[u8], trusted: &[VerifyingKey]) -> Result<Request, CommandError> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge(payload.len()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| CommandError::Malformed(e.to_string()))?;
        if value.get("signature").is_none() {
            let plain: PlainRequest = serde_json::from_value(value)
                .map_err(|e| CommandError::Malformed(e.to_string()))?;
            return match plain.action {
                Action::Index => Ok(Request::Index { id: plain.id }),
                action => Err(CommandError::Unsigned(action)),
            };
        }
        let signed: SignedCommand =
            serde_json::from_value(value).map_err(|e| CommandError::Malformed(e.to_string()))?;
        verify_text(trusted, &signed.key_id, &signed.signature, &signed.command).map_err(|e| {
            match e {
                TextSignatureError::UnknownKey => CommandError::UnknownKey(signed.key_id.clone()),
                _ => CommandError::BadSignature(signed.key_id.clone()),
            }
        })?;
        let command: RepositoryCommand = serde_json::from_str(&signed.command)
            .map_err(|e| CommandError::Malformed(format!("the signed command: {e}")))?;
        command.validate()?;
        Ok(Request::Signed(command))
    }

    /// The correlation id of a request that may not verify or parse, to echo in the
    /// error reply: from an unsigned request, or from a signed envelope's command
    /// text (unverified; it is only echoed).
    pub fn id_of(payload: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct Id {
            id: Option<String>,
            command: Option<String>,
        }
        let outer: Id = serde_json::from_slice(payload).ok()?;
        if outer.id.is_some() {
            return outer.id;
        }
        let inner: Id = serde_json::from_str(&outer.command?).ok()?;
        inner.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn load(model: &str) -> RepositoryCommand {
        RepositoryCommand {
            id: Some("c-1".into()),
            ..RepositoryCommand::new(Action::Load, "pi-1", Some(model), 7)
        }
    }

    #[test]
    fn a_signed_command_verifies_with_its_key_only_and_a_changed_one_does_not() {
        let trusted = [key(1).verifying_key()];
        let payload = load("iris").sign(&key(1));
        assert_eq!(
            RepositoryCommand::verify(&payload, &trusted).unwrap(),
            load("iris")
        );
        let err = RepositoryCommand::verify(&load("iris").sign(&key(2)), &trusted).unwrap_err();
        assert!(matches!(err, CommandError::UnknownKey(_)), "{err}");

        let mut signed: SignedCommand = serde_json::from_slice(&payload).unwrap();
        signed.command = signed.command.replace("\"load\"", "\"unload\"");
        let err = RepositoryCommand::verify(&serde_json::to_vec(&signed).unwrap(), &trusted);
        assert!(matches!(err, Err(CommandError::BadSignature(_))), "{err:?}");
        assert_eq!(
            Request::id_of(&serde_json::to_vec(&signed).unwrap()).as_deref(),
            Some("c-1")
        );
    }

    #[test]
    fn the_wire_form_is_pinned() {
        let command = RepositoryCommand::new(Action::Unload, "pi-1", Some("iris"), 7);
        assert_eq!(
            serde_json::to_string(&command).unwrap(),
            r#"{"action":"unload","device":"pi-1","model":"iris","revision":7}"#
        );
    }

    #[test]
    fn only_an_index_may_be_unsigned_and_junk_is_refused_naming_the_problem() {
        let trusted = [key(1).verifying_key()];
        assert_eq!(
            Request::read(br#"{"action": "index", "id": "q"}"#, &trusted).unwrap(),
            Request::Index {
                id: Some("q".into())
            }
        );
        let err = Request::read(br#"{"action": "unload", "id": "q"}"#, &trusted).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unload commands must be signed by a trusted key ({\"key_id\", \"signature\", \"command\"})"
        );
        for junk in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"action\": \"format\"}",
            &[0xff; 8],
        ] {
            let err = Request::read(junk, &trusted).unwrap_err();
            assert!(matches!(err, CommandError::Malformed(_)), "{err}");
        }
        let huge = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert!(matches!(
            Request::read(&huge, &trusted),
            Err(CommandError::TooLarge(_))
        ));
        let mut no_model = load("iris");
        no_model.model = None;
        let err = RepositoryCommand::verify(&no_model.sign(&key(1)), &trusted).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid repository command: the load command names no model"
        );
        let mut path = RepositoryCommand::new(Action::Unload, "pi-1", Some("iris"), 1);
        path.path = Some("/x.perch".into());
        let err = RepositoryCommand::verify(&path.sign(&key(1)), &trusted).unwrap_err();
        assert!(err.to_string().contains("only for a load"), "{err}");
    }
}
