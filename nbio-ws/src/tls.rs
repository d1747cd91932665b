//! TLS (`wss://`) with rustls, behind the `tls` cargo feature.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_TLS_ENABLED` | `false` | serve TLS on the server's port (`wss://`, `https://` for `/health` and `/metrics`) |
//! | `WS_TLS_CERT` | — | PEM file: the certificate chain, leaf first |
//! | `WS_TLS_KEY` | — | PEM file: the private key (PKCS#8, PKCS#1 or SEC1) |
//!
//! rustls runs with the `ring` provider, TLS 1.2 and 1.3, ALPN
//! `http/1.1`. The TLS handshake is bounded by `WS_HANDSHAKE_TIMEOUT`; a
//! client that fails it is disconnected without an HTTP answer. An
//! unreadable or invalid certificate or key stops startup with an error
//! naming the file. Setting `WS_TLS_ENABLED=true` in a build without the
//! `tls` feature is a configuration error, never a silent plain-text
//! server.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! nbio_ws::Server::builder()
//!     .tls_pem_files("/etc/nbio/cert.pem", "/etc/nbio/key.pem")
//!     .build()?   // reads and checks both files
//!     .serve()
//!     .await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use crate::env::{ConfigError, Env};

/// TLS settings. Part of [`Config`](crate::Config) (`config.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Whether the server speaks TLS (`WS_TLS_ENABLED`, default `false`).
    pub enabled: bool,
    /// The certificate chain, PEM (`WS_TLS_CERT`).
    pub cert: Option<PathBuf>,
    /// The private key, PEM (`WS_TLS_KEY`).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let cfg = TlsConfig {
            enabled: env.boolean("WS_TLS_ENABLED")?.unwrap_or(false),
            cert: env.string("WS_TLS_CERT")?.map(PathBuf::from),
            key: env.string("WS_TLS_KEY")?.map(PathBuf::from),
        };
        if cfg.enabled {
            if !cfg!(feature = "tls") {
                return Err(env.invalid(
                    "WS_TLS_ENABLED",
                    "true",
                    "nbio-ws built with the `tls` cargo feature",
                ));
            }
            if cfg.cert.is_none() {
                return Err(env.invalid(
                    "WS_TLS_ENABLED",
                    "true",
                    "WS_TLS_CERT (a PEM certificate file) to be set as well",
                ));
            }
            if cfg.key.is_none() {
                return Err(env.invalid(
                    "WS_TLS_ENABLED",
                    "true",
                    "WS_TLS_KEY (a PEM private key file) to be set as well",
                ));
            }
        }
        Ok(cfg)
    }
}

/// What the accept loop wraps each TCP connection in.
#[derive(Clone)]
pub(crate) struct Tls {
    #[cfg(feature = "tls")]
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl Tls {
    /// Builds the acceptor the configuration asks for.
    pub(crate) fn new(cfg: &TlsConfig) -> Result<Tls, String> {
        if !cfg.enabled {
            return Ok(Tls {
                #[cfg(feature = "tls")]
                acceptor: None,
            });
        }
        #[cfg(not(feature = "tls"))]
        {
            Err("TLS is enabled but nbio-ws was built without the `tls` cargo feature".into())
        }
        #[cfg(feature = "tls")]
        {
            let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
                return Err("TLS is enabled but the certificate or key file is not set".into());
            };
            Ok(Tls {
                acceptor: Some(rustls_acceptor(cert, key)?),
            })
        }
    }

    /// Whether connections are TLS.
    pub(crate) fn enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.acceptor.is_some()
        }
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Runs the TLS handshake if TLS is on.
    pub(crate) async fn accept(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Stream> {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.acceptor {
            return acceptor.accept(tcp).await.map(|s| Stream::Tls(Box::new(s)));
        }
        Ok(Stream::Plain(tcp))
    }
}

#[cfg(feature = "tls")]
fn rustls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in the TLS certificate file {}",
            cert.display()
        ));
    }
    // The error of a key file never quotes the file's content.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            format!(
                "the TLS certificate {} and key {} do not fit together: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A server-side connection, plain or TLS.
pub(crate) enum Stream {
    Plain(tokio::net::TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            Stream::Tls($s) => {
                let $s = std::pin::Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
