//! The value types of settings that both the file and the flags take: durations and
//! sizes with units, listening addresses, versions, on/off.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use perch_runtime::units;
use perch_runtime::wire::Version;
use serde::Deserialize;

/// A [`Version`] read from a `"X.Y.Z"` string.
#[derive(Debug, Clone, Copy)]
pub(super) struct VersionSetting(pub(super) Version);

impl<'de> Deserialize<'de> for VersionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_version(&text)
            .map(VersionSetting)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
///
/// # Errors
///
/// A message naming the text.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{text:?} is not on or off")),
    }
}

/// Parses `MAJOR.MINOR.PATCH`, each part a `u16`.
///
/// # Errors
///
/// A message naming the text when it is not three `u16`s separated by dots.
pub fn parse_version(text: &str) -> Result<Version, String> {
    let parts: Vec<u16> = text
        .split('.')
        .map(|p| p.parse::<u16>().map_err(|e| format!("{text:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [major, minor, patch] => Ok(Version::new(major, minor, patch)),
        _ => Err(format!("{text:?}: expected MAJOR.MINOR.PATCH")),
    }
}

/// A duration written with a unit: `250ms`, `10s`, `5m`, `1h` (decimals allowed;
/// [`perch_runtime::units::parse_duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<HumanDuration, String> {
        units::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| format!("{text:?}: {e}"))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(text: String) -> Result<HumanDuration, String> {
        text.parse()
    }
}

/// A listening address, or `off`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if text == "off" {
            return Ok(Listen(None));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Listen(Some(addr)));
        }
        // `localhost:8080` and the like.
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|addr| Listen(Some(addr)))
            .ok_or_else(|| format!("{text:?}: expected HOST:PORT (e.g. 127.0.0.1:8080) or off"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        text.parse()
    }
}

/// A size in bytes: an integer, or a number with `KiB`, `MiB` or `GiB` (`kB`, `MB`,
/// `GB` are powers of ten; [`perch_runtime::units::parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        units::parse_size(text)
            .map(ByteSize)
            .map_err(|e| format!("{text:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A broker setting: `embedded`, or a [`perch_mqtt::BrokerUrl`]: `mqtt://host[:port]`
/// or `mqtts://host[:port]` (an IPv6 host in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BrokerUrl {
    /// The broker inside the agent.
    Embedded,
    /// A broker at `host:port`, over TLS when `tls`.
    Mqtt {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// TCP port (1883 for mqtt://, 8883 for mqtts:// when the URL has none).
        port: u16,
        /// Whether the URL was `mqtts://`.
        tls: bool,
    },
}

impl FromStr for BrokerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<BrokerUrl, String> {
        if text == "embedded" {
            return Ok(BrokerUrl::Embedded);
        }
        if !(text.starts_with("mqtt://") || text.starts_with("mqtts://")) {
            return Err(format!(
                "{text:?}: expected mqtt://host[:port], mqtts://host[:port] or embedded"
            ));
        }
        let url: perch_mqtt::BrokerUrl = text.parse()?;
        Ok(BrokerUrl::Mqtt {
            host: url.host,
            port: url.port,
            tls: url.tls,
        })
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(text: String) -> Result<BrokerUrl, String> {
        text.parse()
    }
}

/// The `--sensor` flag: `simulated`, `off`, or an I2C bus device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorFlag {
    /// No sensor, whatever the file says.
    Off,
    /// The simulated sensor.
    Simulated,
    /// A real sensor on this bus.
    I2c(PathBuf),
}

impl FromStr for SensorFlag {
    type Err = String;

    fn from_str(text: &str) -> Result<SensorFlag, String> {
        match text {
            "off" => Ok(SensorFlag::Off),
            "simulated" => Ok(SensorFlag::Simulated),
            path if path.starts_with('/') => Ok(SensorFlag::I2c(PathBuf::from(path))),
            _ => Err(format!(
                "{text:?}: expected simulated, off, or an I2C bus device such as /dev/i2c-1"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_take_units() {
        let d = |t: &str| t.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(d("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert!(d("10").is_err());
        assert!(d("s").is_err());
        let b = |t: &str| t.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(b("1MiB"), Ok(1 << 20));
        assert_eq!(b("1500"), Ok(1500));
        assert!(b("1.5MiB").is_err());
        assert!(b("1 parsec").is_err());
    }

    #[test]
    fn broker_urls_parse_with_default_ports_and_ipv6() {
        let parse = |t: &str| t.parse::<BrokerUrl>();
        assert_eq!(
            parse("mqtt://localhost").unwrap(),
            BrokerUrl::Mqtt {
                host: "localhost".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(
            parse("mqtts://[::1]:9999").unwrap(),
            BrokerUrl::Mqtt {
                host: "::1".into(),
                port: 9999,
                tls: true
            }
        );
        assert_eq!(parse("embedded").unwrap(), BrokerUrl::Embedded);
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://u:p@h",
            "mqtt://h:99999",
            "mqtt://h/x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
