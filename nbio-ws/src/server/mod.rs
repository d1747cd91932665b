//! [`Server`] and [`ServerBuilder`]: configuration, the accept loop and
//! graceful shutdown.
//!
//! Shutdown, whether from [`shutdown_signal`] (SIGINT/SIGTERM) or a future
//! of your own, goes in this order: stop accepting; every connection stops
//! reading, lets its running handlers finish and writes their replies and
//! what else is queued, then closes with 1001 (all of it bounded by the
//! shutdown timeout; handlers still running then are cancelled); wait for
//! the connections to end, at most the shutdown timeout; return `Ok(())`.

mod builder;

pub use builder::{BuildError, ServerBuilder};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::WsEndpoint;
use crate::hub::Hub;
use crate::ws::conn::Mode;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A configured server, ready to serve.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = nbio_ws::Config::from_env()?;
/// nbio_ws::Server::builder().config(cfg).build()?.serve().await?;
/// # Ok(()) }
/// ```
pub struct Server {
    endpoint: WsEndpoint,
    config: Config,
    tls: crate::tls::Tls,
    /// The OpenRPC document, built once (none in raw mode).
    #[cfg(feature = "openrpc")]
    openrpc: Option<Arc<str>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("bind", &self.config.bind_addr())
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The hub of connected clients.
    pub fn hub(&self) -> &Hub {
        self.endpoint.hub()
    }

    /// The settings the server was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The names of the JSON-RPC methods served, sorted (empty in raw mode).
    pub fn method_names(&self) -> Vec<&str> {
        match &self.endpoint.shared.mode {
            Mode::Rpc(r) => r.method_names(),
            Mode::Raw(_) => Vec::new(),
        }
    }

    /// The OpenRPC document of the server (feature `openrpc`): what
    /// `rpc.discover` and `GET /openrpc.json` answer, built once by
    /// [`ServerBuilder::build`]. `None` in raw mode. See
    /// [`openrpc`](crate::openrpc).
    #[cfg(feature = "openrpc")]
    pub fn openrpc_document(&self) -> Option<&str> {
        self.openrpc.as_deref()
    }

    #[cfg(feature = "internal-hooks")]
    pub(crate) fn endpoint_ref(&self) -> &WsEndpoint {
        &self.endpoint
    }

    /// The WebSocket endpoint, to mount inside another hyper or axum
    /// application instead of calling `serve`.
    pub fn endpoint(&self) -> WsEndpoint {
        self.endpoint.clone()
    }

    /// Binds the configured address and serves until SIGINT or SIGTERM,
    /// then shuts down gracefully.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.serve_with_shutdown(shutdown_signal()).await
    }

    /// Binds the configured address and serves until `shutdown` completes,
    /// then shuts down gracefully.
    pub async fn serve_with_shutdown(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let addr = self.config.bind_addr();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        self.serve_listener(listener, shutdown).await
    }

    /// Serves on a listener you bound yourself (for example on port 0 in
    /// tests) until `shutdown` completes.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// println!("listening on {}", listener.local_addr()?);
    /// let server = nbio_ws::Server::builder().build()?;
    /// server.serve_listener(listener, nbio_ws::shutdown_signal()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_listener(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, path = %self.config.path, tls = self.tls.enabled(), "listening");
        }
        let admin = match self.config.admin_addr {
            None => None,
            Some(addr) => {
                let admin = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: addr.to_string(),
                        source,
                    })?;
                tracing::info!(addr = %admin.local_addr().unwrap_or(addr), "admin listening (/health, /metrics)");
                Some(admin)
            }
        };
        self.hub().start_broker();
        // HTTP connections not (yet) upgraded: told to finish on shutdown.
        let http_stop = CancellationToken::new();
        let http_tasks = TaskTracker::new();
        let mut http = http1::Builder::new();
        let limits = &self.config.limits;
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            .max_buf_size(limits.max_header_size.max(crate::limits::MIN_HEADER_SIZE))
            .keep_alive(true);
        let handshake_timeout = limits.handshake_timeout;
        // The admin listener outlives the public one until shutdown is
        // over, so `/health` reports it (503 "shutting_down") meanwhile.
        let admin_stop = CancellationToken::new();
        let admin_tasks = TaskTracker::new();
        if let Some(admin) = admin {
            admin_tasks.spawn(serve_admin(
                admin,
                self.endpoint.clone(),
                http.clone(),
                admin_stop.clone(),
                admin_tasks.clone(),
            ));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors or a reset before accept:
                            // back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    // A permit per connection not yet upgraded (see `limits`).
                    let permit = match &self.endpoint.gate.pending {
                        None => None,
                        Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                self.hub().metrics().incr("pending_handshake_rejections");
                                tracing::debug!(%remote, "too many handshakes in progress: refused");
                                http_tasks.spawn(crate::limits::refuse_busy(stream));
                                continue;
                            }
                        },
                    };
                    let endpoint = self.endpoint.clone();
                    let http = http.clone();
                    let tls = self.tls.clone();
                    let stop = http_stop.clone();
                    http_tasks.spawn(async move {
                        // Released when the connection is upgraded or closed.
                        let _permit = permit;
                        let io = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(io)) => io,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        let service = service_fn(move |req| {
                            let endpoint = endpoint.clone();
                            async move { Ok::<_, Infallible>(endpoint.handle(req, remote).await) }
                        });
                        serve_http(&http, io, service, remote, &stop).await;
                    });
                }
            }
        }
        drop(listener);
        http_stop.cancel();
        http_tasks.close();
        self.shutdown(http_tasks).await;
        admin_stop.cancel();
        admin_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_tasks.wait()).await;
        Ok(())
    }

    async fn shutdown(&self, http_tasks: TaskTracker) {
        let timeout = self.config.shutdown_timeout;
        tracing::info!(clients = self.hub().len(), "shutting down");
        // Each connection stops reading, gives its handlers until the
        // timeout to finish, writes what is queued and closes with 1001.
        crate::ws::conn::begin_shutdown(&self.endpoint.shared);
        self.endpoint.tracker.close();
        let wait = async {
            tokio::join!(http_tasks.wait(), self.endpoint.tracker.wait());
        };
        // Queues drain within `timeout`; the close handshake gets a little more.
        if tokio::time::timeout(timeout + Duration::from_secs(1), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                clients = self.hub().len(),
                "shutdown timeout: dropping remaining connections"
            );
        }
        self.hub().stop_broker().await;
        tracing::info!("stopped");
    }
}

/// Serves one HTTP/1 connection (with upgrades) until it ends, or until
/// `stop`, when it is told to finish what it is doing.
async fn serve_http<I, S>(
    http: &http1::Builder,
    io: I,
    service: S,
    remote: std::net::SocketAddr,
    stop: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::http::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "http connection error");
    }
}

/// The admin listener (`WS_ADMIN_ADDR`): `/health` and `/metrics`, plain
/// HTTP, until `stop`.
async fn serve_admin(
    listener: TcpListener,
    endpoint: WsEndpoint,
    http: http1::Builder,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (endpoint, http, stop) = (endpoint.clone(), http.clone(), stop.clone());
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let res = endpoint.handle_admin(&req);
                async move { Ok::<_, Infallible>(res) }
            });
            serve_http(&http, stream, service, remote, &stop).await;
        });
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
