//! `host:port` to listen on (`http.listen`, `ingest.listen`): parsed for form when
//! loaded, resolved when the server starts. Pure parsing, and the one lookup.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::Deserialize;

use super::ConfigError;

/// `host:port` for the health endpoints: an IPv4 address, a bracketed IPv6 address or a
/// host name, resolved when the worker starts ([`ListenAddr::resolve`]). Checked for
/// form only when loaded, so a setting naming a host resolves where the worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// The addresses to listen on: each one the host resolves to, in the resolver's
    /// order, without duplicates (`localhost` is often both 127.0.0.1 and ::1). Failure
    /// to resolve is an error naming `http.listen`.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let resolved = (host, self.port)
            .to_socket_addrs()
            .map_err(|e| ConfigError::Rejected {
                key: "http.listen",
                problem: format!("cannot resolve {}: {e}", self.host),
            })?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in resolved {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ConfigError::Rejected {
                key: "http.listen",
                problem: format!("{} resolves to no address", self.host),
            });
        }
        Ok(addrs)
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<ListenAddr, String> {
        const FORM: &str = "expected host:port, e.g. 127.0.0.1:9090, [::1]:9090 or localhost:9090";
        if let Ok(addr) = text.parse::<SocketAddr>() {
            let host = match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            };
            return Ok(ListenAddr {
                host,
                port: addr.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no port; {FORM}"));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!("{port:?} is not a port (0 to 65535); {FORM}"));
        };
        // A host name (RFC 1123 labels; `_` tolerated); an IP address parsed above.
        let is_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !is_name {
            return Err(format!("{host:?} is not a host name or IP address; {FORM}"));
        }
        Ok(ListenAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::super::load_env;

    /// `http.listen` takes `host:port` with a host name, resolved when the worker starts,
    /// as well as IP addresses; anything else is refused naming the key.
    #[test]
    fn http_listen_takes_a_host_name_and_refuses_garbage() {
        let s = load_env(&[("NORMALIZER__HTTP__LISTEN", "localhost:9090")]).unwrap();
        assert_eq!(s.http.listen.to_string(), "localhost:9090");
        let addrs = s.http.listen.resolve().unwrap();
        assert!(
            addrs.contains(&"127.0.0.1:9090".parse().unwrap()),
            "{addrs:?}"
        );
        for ok in [
            "127.0.0.1:0",
            "0.0.0.0:9090",
            "[::1]:9090",
            "health-1.internal:9090",
        ] {
            assert!(
                load_env(&[("NORMALIZER__HTTP__LISTEN", ok)]).is_ok(),
                "{ok}"
            );
        }
        let literal = load_env(&[("NORMALIZER__HTTP__LISTEN", "[::1]:9090")]).unwrap();
        assert_eq!(
            literal.http.listen.resolve().unwrap(),
            ["[::1]:9090".parse().unwrap()]
        );
        for garbage in [
            "nowhere",
            "localhost:",
            ":9090",
            "localhost:99999",
            "localhost:http",
            "local host:9090",
            "http://localhost:9090",
            "::1:9090",
            "[::1:9090",
        ] {
            let e = load_env(&[("NORMALIZER__HTTP__LISTEN", garbage)]).unwrap_err();
            assert!(e.to_string().starts_with("http.listen: "), "{garbage}: {e}");
        }
    }
}
