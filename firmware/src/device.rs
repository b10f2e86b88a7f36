//! The device's id: the `{device}` level of every MQTT topic and the name of its folders.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A device id: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`, so it is
/// one MQTT topic level and safe in file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// The longest id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// This machine's host name, with characters an id cannot hold replaced by `-`;
    /// `perch` if the host name cannot be read.
    pub fn from_hostname() -> DeviceId {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let cleaned: String = name
            .trim()
            .chars()
            .map(|c| if valid_id_char(c) { c } else { '-' })
            .take(DeviceId::MAX_LEN)
            .collect();
        DeviceId::from_str(&cleaned).unwrap_or_else(|_| DeviceId("perch".into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl FromStr for DeviceId {
    type Err = String;

    fn from_str(text: &str) -> Result<DeviceId, String> {
        if text.is_empty() || text.len() > DeviceId::MAX_LEN {
            return Err(format!(
                "device id {text:?} must be 1 to {} bytes",
                DeviceId::MAX_LEN
            ));
        }
        if let Some(c) = text.chars().find(|&c| !valid_id_char(c)) {
            return Err(format!(
                "device id {text:?} holds {c:?}; use letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(DeviceId(text.to_string()))
    }
}

impl TryFrom<String> for DeviceId {
    type Error = String;

    fn try_from(text: String) -> Result<DeviceId, String> {
        text.parse()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_one_safe_topic_level() {
        assert!("gw-01.kitchen_2".parse::<DeviceId>().is_ok());
        for bad in ["", "a/b", "a+b", "a#", "é", &"x".repeat(65)] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad}");
        }
        let host = DeviceId::from_hostname();
        assert!(host.as_str().parse::<DeviceId>().is_ok());
    }
}
