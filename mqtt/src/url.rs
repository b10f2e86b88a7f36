//! Broker URLs: `mqtt://host[:port]` and `mqtts://host[:port]`.

use std::fmt;
use std::str::FromStr;

/// MQTT's registered port.
pub const MQTT_PORT: u16 = 1883;
/// MQTT over TLS's registered port.
pub const MQTTS_PORT: u16 = 8883;

/// Where a broker listens: `mqtt://host[:port]` (plain TCP, port 1883 by default) or
/// `mqtts://host[:port]` (TLS, port 8883 by default). The host is a name, an IPv4
/// address or an IPv6 address in brackets (`mqtt://[::1]:1884`). Credentials belong in
/// their own settings, not in the URL; a URL has no path or query.
///
/// ```
/// use perch_mqtt::BrokerUrl;
///
/// let url: BrokerUrl = "mqtts://[fd00::7]".parse()?;
/// assert_eq!((url.host.as_str(), url.port, url.tls), ("fd00::7", 8883, true));
/// assert_eq!(url.to_string(), "mqtts://[fd00::7]:8883");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the URL was `mqtts://`.
    pub tls: bool,
}

impl BrokerUrl {
    /// A plain `mqtt://` broker at `host:port`.
    pub fn plain(host: impl Into<String>, port: u16) -> BrokerUrl {
        BrokerUrl {
            host: host.into(),
            port,
            tls: false,
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!(
                "{text:?}: expected mqtt://host[:port] or mqtts://host[:port]"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(format!(
                "{text:?}: put credentials in username/password, not in the URL"
            ));
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(format!("{text:?}: a broker URL has no path or query"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed '[' in the host"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{text:?}: unexpected {after:?} after the host")),
            }
        } else {
            match rest.split_once(':') {
                Some((_, _)) if rest.matches(':').count() > 1 => {
                    return Err(format!(
                        "{text:?}: write an IPv6 address in brackets, as mqtt://[::1]:1883"
                    ))
                }
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: port {p:?} is not a number from 0 to 65535"))?,
            None if tls => MQTTS_PORT,
            None => MQTT_PORT,
        };
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BrokerUrl, String> {
        text.parse()
    }

    #[test]
    fn urls_take_default_ports_by_scheme() {
        assert_eq!(
            parse("mqtt://localhost"),
            Ok(BrokerUrl::plain("localhost", 1883))
        );
        let tls = parse("mqtts://broker.example.com/").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert_eq!(
            parse("mqtt://10.0.0.5:1999"),
            Ok(BrokerUrl::plain("10.0.0.5", 1999))
        );
    }

    #[test]
    fn ipv6_hosts_are_written_in_brackets_and_printed_back_so() {
        let url = parse("mqtts://[::1]:9999").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.tls), ("::1", 9999, true));
        assert_eq!(url.to_string(), "mqtts://[::1]:9999");
        assert_eq!(parse("mqtt://[fe80::1]").unwrap().port, 1883);
        let err = parse("mqtt://::1:1883").unwrap_err();
        assert!(err.contains("brackets"), "{err}");
    }

    #[test]
    fn malformed_urls_are_refused_naming_the_text() {
        for bad in [
            "http://x",
            "h:1883",
            "mqtt://",
            "mqtt://:1",
            "mqtt://u:p@h",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://h/x",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
