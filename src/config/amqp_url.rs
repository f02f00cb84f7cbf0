//! The AMQP URL (`amqp.url`): one or several, comma-separated; why one cannot be used;
//! and its text with every password masked, the only way it is printed.

use std::fmt;

use serde::Deserialize;

/// An AMQP URI. It holds a password, so `Debug` and `Display` print it masked; only
/// [`AmqpUrl::expose`] gives the real text, to the connection code.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    pub fn new(url: impl Into<String>) -> AmqpUrl {
        AmqpUrl(url.into())
    }

    /// The URI with its password. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URLs it lists: one, or several separated by commas (the nodes of a cluster).
    pub fn each(&self) -> Vec<AmqpUrl> {
        self.0
            .split(',')
            .map(|u| AmqpUrl(u.trim().to_owned()))
            .collect()
    }

    /// `amqps://`.
    pub fn is_tls(&self) -> bool {
        self.0.trim_start().starts_with("amqps:")
    }

    /// Why one URL cannot be used (`tls_set`: TLS files are configured); never quotes
    /// the password.
    pub(super) fn validate(&self, tls_set: bool) -> Result<(), String> {
        match self.expose().parse::<lapin::uri::AMQPUri>() {
            // The parser's own message can quote the whole URI, password included.
            Err(_) => {
                return Err(String::from(
                    "not an AMQP URI (amqp://user:password@host:port/vhost)",
                ));
            }
            Ok(uri) if uri.scheme == lapin::uri::AMQPScheme::AMQP && tls_set => {
                return Err(String::from(
                    "TLS files are set but amqp.url is amqp:// (plain text); use amqps://",
                ));
            }
            // `amqp://host/` is not the default vhost: the path after the `/` is the
            // vhost's name, here empty, and RabbitMQ refuses every connection to it.
            Ok(uri) if uri.vhost.is_empty() => {
                // The URI as it should be, password masked: `%2f` after the `/`.
                let masked = self.masked();
                let path = masked
                    .find("://")
                    .and_then(|i| masked[i + 3..].find('/').map(|j| i + 3 + j + 1))
                    .unwrap_or(masked.len());
                return Err(format!(
                    "a trailing `/` names the empty vhost, which RabbitMQ never has; the \
                     default vhost `/` is written `%2f` ({}%2f{}), or leave the path out",
                    &masked[..path],
                    &masked[path..]
                ));
            }
            Ok(_) => {}
        }
        // The client library's URI parser turns an IPv6 literal host into "localhost".
        let url = self.expose();
        if url
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .is_some_and(|authority| {
                authority
                    .rsplit('@')
                    .next()
                    .is_some_and(|h| h.starts_with('['))
            })
        {
            return Err(String::from(
                "IPv6 literal hosts are not supported by the AMQP client; use a host name",
            ));
        }
        Ok(())
    }

    /// `scheme://user:****@host...`: the URI with any password replaced (each of them,
    /// when it lists several).
    pub fn masked(&self) -> String {
        if self.0.contains(',') {
            return self
                .each()
                .iter()
                .map(AmqpUrl::masked)
                .collect::<Vec<_>>()
                .join(",");
        }
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return "(not a URI)".into();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') {
                    format!("{user}:****")
                } else {
                    user.to_owned()
                };
                format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
            }
            None => url.clone(),
        }
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.masked())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::super::load_env;
    use super::*;

    #[test]
    fn bad_url_errors_never_show_the_password() {
        for url in [
            "amqp//guest:s3cret@host",
            "amqp://guest:s3cret@host:5671/",
            "http://u:s3cret@[::1",
        ] {
            let e = load_env(&[("NORMALIZER__AMQP__URL", url)]).unwrap_err();
            assert!(e.to_string().starts_with("amqp.url: "), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn several_urls_each_checked_and_masked() {
        let two = "amqp://u:s3cret@a:5672/%2f, amqp://u:s3cret@b:5672/%2f";
        let s = load_env(&[("NORMALIZER__AMQP__URL", two)]).unwrap();
        let urls = s.amqp.url.each();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[1].expose(), "amqp://u:s3cret@b:5672/%2f");
        assert_eq!(
            s.amqp.url.masked(),
            "amqp://u:****@a:5672/%2f,amqp://u:****@b:5672/%2f"
        );
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:s3cret@a/%2f,amqp//b")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("amqp.url: URL 2 of 2: not an AMQP URI"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = load_env(&[(
            "NORMALIZER__AMQP__URL",
            "amqp://u:p@a/%2f,amqps://u:p@b/%2f",
        )])
        .unwrap_err();
        assert!(e.to_string().contains("mix amqp:// and amqps://"), "{e}");
    }

    /// A trailing `/` names the empty vhost, which RabbitMQ never has: every connection
    /// would be refused. Said at start, with the way to name the default vhost.
    #[test]
    fn a_trailing_slash_naming_the_empty_vhost_is_refused() {
        for url in [
            "amqp://guest:s3cret@127.0.0.1:5672/",
            "amqp://guest:s3cret@rabbit/?heartbeat=5",
        ] {
            let e = load_env(&[("NORMALIZER__AMQP__URL", url)])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("amqp.url: "), "{e}");
            assert!(e.contains("empty vhost") && e.contains("%2f"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://guest:s3cret@rabbit:5672/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(amqp://guest:****@rabbit:5672/%2f)"), "{e}");
        for url in [
            "amqp://guest:s3cret@127.0.0.1:5672/%2f",
            "amqp://guest:s3cret@127.0.0.1:5672",
            "amqp://guest:s3cret@127.0.0.1:5672/prod",
        ] {
            assert!(load_env(&[("NORMALIZER__AMQP__URL", url)]).is_ok(), "{url}");
        }
    }

    #[test]
    fn ipv6_literal_hosts_are_refused_rather_than_misrouted() {
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:p@[::1]:5672/%2f")]).unwrap_err();
        assert!(e.to_string().starts_with("amqp.url: IPv6"), "{e}");
        assert!(load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:p@rabbit:5672/%2f")]).is_ok());
    }

    #[test]
    fn urls_print_masked() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:****@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://user:p%40ss@host/vh?heartbeat=5",
                "amqp://user:****@host/vh?heartbeat=5",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host:5672", "amqp://host:5672"),
            ("amqp://u:p@ss@host/", "amqp://u:****@host/"),
            ("garbage", "(not a URI)"),
        ];
        for (url, want) in cases {
            let u = AmqpUrl::new(url);
            assert_eq!(u.masked(), want);
            assert_eq!(format!("{u}"), want);
            assert_eq!(format!("{u:?}"), format!("AmqpUrl({want})"));
        }
    }
}
