//! TLS for `amqps://`: rustls, with the `ring` crypto provider.
//!
//! The handshake happens in the worker's own runtime ([`super::wire::CheckedTokio`]),
//! under the frame check, which must see AMQP frames, not TLS records; the client is
//! handed the decrypted stream and a plain `amqp://` URI.
//!
//! `ring` rather than rustls' default `aws-lc-rs`: it builds with a C compiler alone (no
//! CMake, no NASM), so the worker builds wherever Rust does, and it implements what
//! RabbitMQ negotiates (TLS 1.2 and 1.3, ECDHE, AES-GCM, ChaCha20). We need no FIPS mode,
//! which is aws-lc-rs' reason to be.

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use futures_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::config::TlsSettings;

/// Why the TLS settings cannot be used: names the setting and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {path}: {problem}")]
pub struct TlsSettingsError {
    pub key: &'static str,
    pub path: String,
    pub problem: String,
}

/// Where a connection's TLS goes: the client configuration and the name the broker's
/// certificate must carry.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    pub(crate) fn new(settings: &TlsSettings, host: &str) -> Result<TlsTarget, TlsSettingsError> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| TlsSettingsError {
            key: "amqp.url",
            path: host.to_owned(),
            problem: format!("not a host name TLS can verify: {e}"),
        })?;
        Ok(TlsTarget {
            connector: TlsConnector::from(client_config(settings)?),
            server_name,
        })
    }
}

/// Reads the TLS files (or the system's roots) into a client configuration. Checked at
/// start (a bad file exits 78) and again at each connection, so renewed files are used.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsSettingsError> {
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs = read_certificates("amqp.tls.ca_file", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid(
                    "amqp.tls.ca_file",
                    path,
                    "no usable CA certificate",
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsSettingsError {
                    key: "amqp.tls.ca_file",
                    path: "(unset)".into(),
                    problem: "this system has no CA certificates to verify the broker with; set amqp.tls.ca_file".into(),
                });
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingsError {
                key: "amqp.tls",
                path: "-".into(),
                problem: e.to_string(),
            })?
            .with_root_certificates(roots);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certificates("amqp.tls.cert_file", cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                invalid(
                    "amqp.tls.key_file",
                    key_path,
                    &format!("no private key: {e}"),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("amqp.tls.key_file", key_path, &e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    std::fs::metadata(path).map_err(|e| invalid(key, path, &format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, path, &format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn invalid(key: &'static str, path: &Path, problem: &str) -> TlsSettingsError {
    TlsSettingsError {
        key,
        path: path.display().to_string(),
        problem: problem.to_owned(),
    }
}

/// A failed TLS handshake, with what it most likely means.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {source}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct TlsHandshakeError {
    source: io::Error,
    hint: Option<&'static str>,
}

impl TlsHandshakeError {
    pub(crate) fn new(source: io::Error) -> TlsHandshakeError {
        let hint = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .and_then(hint);
        TlsHandshakeError { source, hint }
    }
}

fn hint(e: &rustls::Error) -> Option<&'static str> {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "the broker's certificate is not signed by a CA we trust: set amqp.tls.ca_file to the CA that signed it",
        ),
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => Some("the broker's certificate has expired"),
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => Some("the broker's certificate is not valid yet: check the clocks"),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(
            "the broker's certificate does not name the host in amqp.url: connect by a name it carries",
        ),
        E::InvalidCertificate(CertificateError::Other(other))
            if other.0.downcast_ref::<webpki::Error>()
                == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            Some(
                "the broker presents a CA certificate (a self-signed one?) as its own: give it a server certificate signed by that CA, and set amqp.tls.ca_file to the CA",
            )
        }
        E::InvalidMessage(_) => {
            Some("the port does not speak TLS: a plain AMQP port? amqps:// is usually port 5671")
        }
        E::AlertReceived(_) => Some(
            "the broker refused the handshake: does it require a client certificate (amqp.tls.cert_file), or refuse ours?",
        ),
        _ => None,
    }
}

/// The socket under the frame check: plain TCP, or TLS over it.
pub enum Transport<S> {
    Plain(S),
    Tls(Box<futures_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Connects `tcp`'s stream through TLS when there is a target.
pub(crate) async fn over<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    tls: Option<&TlsTarget>,
) -> io::Result<Transport<S>> {
    let Some(target) = tls else {
        return Ok(Transport::Plain(tcp));
    };
    match target
        .connector
        .connect(target.server_name.clone(), tcp)
        .await
    {
        Ok(stream) => Ok(Transport::Tls(Box::new(stream))),
        Err(e) => Err(io::Error::new(e.kind(), TlsHandshakeError::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_certificate_used_as_the_brokers_own_gets_a_hint() {
        let error = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity),
        )));
        let said = hint(&error).expect("a hint");
        assert!(
            said.contains("server certificate signed by that CA"),
            "{said}"
        );
        let other = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(webpki::Error::BadDer),
        )));
        assert_eq!(hint(&other), None);
    }
}
