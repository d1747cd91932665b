//! [`Server`] and [`ServerBuilder`]: configuration, the accept loop and
//! graceful shutdown.
//!
//! Shutdown, whether from [`shutdown_signal`] (SIGINT/SIGTERM) or a future
//! of your own, goes in this order: stop accepting; close every client with
//! 1001 after writing what is already queued for it (each bounded by the
//! shutdown timeout); wait for the connections to end, at most the shutdown
//! timeout; return `Ok(())`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::config::Config;
use crate::connection::{Hook, Mode, RawHandler, RawMessage, Settings, Shared};
use crate::http::WsEndpoint;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::router::{registered_methods, ErasedHandler, Handler, Router, StateMap};

/// Why [`ServerBuilder::build`] refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Two methods were registered under one name.
    #[error("method {name:?} is registered twice ({first} and {second})")]
    DuplicateMethod {
        /// The method name.
        name: String,
        /// Where the first registration came from.
        first: String,
        /// Where the second registration came from.
        second: String,
    },
    /// The WebSocket path does not start with `/`.
    #[error("the WebSocket path must start with '/': {0:?}")]
    InvalidPath(String),
    /// A limit was set to zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The pub/sub broker cannot be set up (an adapter whose cargo feature
    /// is not compiled in, an invalid URL or channel).
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// A security setting cannot be used: an unreadable TLS certificate or
    /// JWT key, TLS without the `tls` feature, an origin or proxy that does
    /// not parse, a header limit under 8 KiB.
    #[error("{0}")]
    Security(String),
}

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

/// Configures a [`Server`]. Start with [`Server::builder`].
///
/// ```no_run
/// use nbio_ws::{rpc_method, Params, Server};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Text { text: String }
///
/// #[rpc_method("upper")]
/// fn upper(Params(p): Params<Text>) -> String {
///     p.text.to_uppercase()
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     Server::builder()
///         .bind("127.0.0.1:8080".parse()?)
///         .path("/ws")
///         .max_message_size(64 * 1024)
///         .build()?
///         .serve()
///         .await?;
///     Ok(())
/// }
/// ```
pub struct ServerBuilder {
    pub(crate) config: Config,
    methods: Vec<(String, ErasedHandler, String)>,
    use_registry: bool,
    state: StateMap,
    on_connect: Option<Hook>,
    on_disconnect: Option<Hook>,
    raw: Option<RawHandler>,
    max_inflight: usize,
    close_timeout: Duration,
    pages: std::collections::HashMap<String, (&'static str, bytes::Bytes)>,
    broker: Option<Arc<dyn crate::broker::Broker>>,
    /// A custom authenticator (see [`crate::auth`]).
    pub(crate) authenticator: Option<Arc<dyn crate::auth::Authenticator>>,
    /// A security setting given to the builder that does not parse.
    pub(crate) security_error: Option<String>,
}

impl ServerBuilder {
    fn new() -> Self {
        ServerBuilder {
            config: Config::default(),
            methods: Vec::new(),
            use_registry: true,
            state: StateMap::default(),
            on_connect: None,
            on_disconnect: None,
            raw: None,
            max_inflight: 64,
            close_timeout: Duration::from_secs(5),
            pages: std::collections::HashMap::new(),
            broker: None,
            authenticator: None,
            security_error: None,
        }
    }

    /// Replaces every setting with those of `config` (for example from
    /// [`Config::from_env`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The address to listen on (default `127.0.0.1:8080`; port 0 picks a
    /// free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.host = addr.ip().to_string();
        self.config.port = addr.port();
        self
    }

    /// The path of the WebSocket endpoint (default `/ws`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }

    /// The largest message accepted, in bytes, after reassembly of
    /// fragments (default 1 MiB). Larger messages close the connection
    /// with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// The capacity of each client's outbound queue, in messages (default
    /// 256). A client whose queue is full is closed with 1008.
    pub fn send_buffer(mut self, messages: usize) -> Self {
        self.config.send_buffer = messages;
        self
    }

    /// How often each client is pinged (default 10 s).
    pub fn ping_interval(mut self, every: Duration) -> Self {
        self.config.ping_interval = every;
        self
    }

    /// How long a client may stay silent, not even answering pings, before
    /// it is closed with 1001 (default 60 s).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.config.pong_timeout = timeout;
        self
    }

    /// How long graceful shutdown waits for queued messages and
    /// connections (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long the server waits for the peer's answer to its close frame
    /// (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How many requests of one connection may wait at once (default 64).
    /// Past that the server stops reading from that connection until one
    /// finishes.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_inflight = n;
        self
    }

    /// Serves a static page (HTML, JavaScript, CSS...) at `path` with GET,
    /// on the same port as the WebSocket endpoint. The WebSocket path may
    /// also carry a page: upgrade requests go to the endpoint, plain GETs
    /// get the page.
    ///
    /// ```
    /// let server = nbio_ws::Server::builder()
    ///     .page("/", "text/html; charset=utf-8", "<!doctype html><p>hello</p>")
    ///     .build();
    /// assert!(server.is_ok());
    /// ```
    pub fn page(
        mut self,
        path: impl Into<String>,
        content_type: &'static str,
        body: impl Into<bytes::Bytes>,
    ) -> Self {
        self.pages.insert(path.into(), (content_type, body.into()));
        self
    }

    /// Pub/sub settings for scale-out (what `WS_PUBSUB_*` set): with
    /// `enabled`, `build` creates the chosen adapter's broker, which
    /// connects in the background. See [`broker`](crate::broker).
    ///
    /// ```
    /// use nbio_ws::broker::PubSubConfig;
    ///
    /// let built = nbio_ws::Server::builder()
    ///     .pubsub(PubSubConfig::redis("redis://127.0.0.1:6379/0").channel("chat"))
    ///     .build();
    /// // Without the `redis` feature, `build` names the missing feature.
    /// assert_eq!(built.is_ok(), cfg!(feature = "redis"));
    /// ```
    pub fn pubsub(mut self, pubsub: crate::broker::PubSubConfig) -> Self {
        self.config.pubsub = pubsub;
        self
    }

    /// Uses this broker (one of [`broker`](crate::broker)'s, or your own
    /// [`Broker`](crate::broker::Broker)) instead of the one the pub/sub
    /// settings name, on the configured channel.
    ///
    /// ```
    /// use nbio_ws::broker::LocalBroker;
    ///
    /// // Two servers in one process that see each other's broadcasts.
    /// let shared = LocalBroker::new();
    /// let a = nbio_ws::Server::builder().broker(shared.clone()).build().unwrap();
    /// let b = nbio_ws::Server::builder().broker(shared).build().unwrap();
    /// assert!(a.hub().broker_health().is_some());
    /// # drop(b);
    /// ```
    pub fn broker<B: crate::broker::Broker>(mut self, broker: B) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// Shared state, available to handlers through [`State<T>`](crate::State).
    /// One value per type.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Registers a method explicitly. The handler's arguments are
    /// extractors; it returns `Result<T, E>` with `T: Serialize` and
    /// `E: Into<RpcError>`.
    ///
    /// ```
    /// use nbio_ws::{Client, Params, RpcError, Server};
    ///
    /// let server = Server::builder()
    ///     .method("sum", |Params(v): Params<Vec<i64>>| async move {
    ///         Ok::<_, RpcError>(v.iter().sum::<i64>())
    ///     })
    ///     .method("id", |c: Client| async move { Ok::<_, RpcError>(c.id()) })
    ///     .build()
    ///     .unwrap();
    /// assert!(server.method_names().contains(&"sum"));
    /// ```
    pub fn method<H, Args>(mut self, name: impl Into<String>, handler: H) -> Self
    where
        H: Handler<Args>,
        Args: 'static,
    {
        let erased: ErasedHandler = Arc::new(move |ctx| handler.call(ctx));
        self.methods
            .push((name.into(), erased, "ServerBuilder::method".to_owned()));
        self
    }

    /// Whether methods annotated with `#[rpc_method]` are picked up
    /// (default `true`). Turn it off to serve only explicit methods.
    pub fn registered_methods(mut self, enabled: bool) -> Self {
        self.use_registry = enabled;
        self
    }

    /// Runs `hook` after each client connects, before its first message
    /// is read.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |c| Box::pin(hook(c))));
        self
    }

    /// Runs `hook` after each client disconnects (it is already out of the
    /// hub).
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_disconnect = Some(Arc::new(move |c| Box::pin(hook(c))));
        self
    }

    /// Raw mode: every whole message (text or binary) goes to `handler`
    /// instead of the JSON-RPC router, in order, one at a time per
    /// connection. For custom protocols.
    ///
    /// ```
    /// use nbio_ws::{Client, RawMessage, Server};
    ///
    /// let echo = Server::builder()
    ///     .path("/")
    ///     .raw(|client: Client, msg: RawMessage| async move {
    ///         let _ = match msg {
    ///             RawMessage::Text(t) => client.send_text(t),
    ///             RawMessage::Binary(b) => client.send_binary(b),
    ///         };
    ///     })
    ///     .build();
    /// assert!(echo.is_ok());
    /// ```
    pub fn raw<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Client, RawMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.raw = Some(Arc::new(move |c, m| Box::pin(handler(c, m))));
        self
    }

    /// Checks the configuration and builds the server. Fails on a method
    /// name registered twice, a path without a leading `/`, a zero
    /// limit, or pub/sub settings that cannot work (an adapter that is not
    /// compiled in, an invalid URL). A broker that is merely unreachable
    /// does not fail the build: it is retried in the background.
    pub fn build(self) -> Result<Server, BuildError> {
        let cfg = &self.config;
        if !cfg.path.starts_with('/') {
            return Err(BuildError::InvalidPath(cfg.path.clone()));
        }
        for (name, v) in [
            ("max_message_size", cfg.max_message_size),
            ("send_buffer", cfg.send_buffer),
            ("max_concurrent_requests", self.max_inflight),
        ] {
            if v == 0 {
                return Err(BuildError::Zero(name));
            }
        }
        for (name, d) in [
            ("ping_interval", cfg.ping_interval),
            ("pong_timeout", cfg.pong_timeout),
        ] {
            if d.is_zero() {
                return Err(BuildError::Zero(name));
            }
        }

        let mut all: Vec<(String, ErasedHandler, String)> = Vec::new();
        if self.use_registry {
            for def in registered_methods() {
                all.push((
                    def.name().to_owned(),
                    def.erased(),
                    def.location().to_owned(),
                ));
            }
        }
        all.extend(self.methods);
        let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for (name, _, origin) in &all {
            if let Some(first) = seen.insert(name, origin) {
                return Err(BuildError::DuplicateMethod {
                    name: name.clone(),
                    first: first.to_owned(),
                    second: origin.clone(),
                });
            }
        }

        let broker = match self.broker {
            Some(b) => {
                cfg.pubsub
                    .validate()
                    .map_err(crate::broker::BrokerError::from)?;
                Some(b)
            }
            None if cfg.pubsub.enabled => Some(crate::broker::from_config(&cfg.pubsub)?),
            None => None,
        };

        let metrics = Arc::new(Metrics::default());
        let hub = Hub::with_metrics(Arc::clone(&metrics));
        if let Some(b) = broker {
            hub.attach_broker(b, &cfg.pubsub.channel, cfg.pubsub.presence_ttl);
        }
        let mode = match self.raw {
            Some(raw) => Mode::Raw(raw),
            None => Mode::Rpc(Router::new(
                all.into_iter().map(|(n, h, _)| (n, h)).collect(),
                self.state,
                metrics,
            )),
        };
        if let Some(e) = self.security_error {
            return Err(BuildError::Security(e));
        }
        if cfg.limits.max_header_size < crate::limits::MIN_HEADER_SIZE {
            return Err(BuildError::Security(format!(
                "max_header_size must be at least {} bytes",
                crate::limits::MIN_HEADER_SIZE
            )));
        }
        let tls = crate::tls::Tls::new(&cfg.tls).map_err(BuildError::Security)?;
        let gate = crate::gate::Gate::new(cfg, self.authenticator, Arc::clone(hub.metrics()))
            .map_err(BuildError::Security)?;
        let settings = Settings {
            max_message_size: cfg.max_message_size,
            send_buffer: cfg.send_buffer,
            ping_interval: cfg.ping_interval,
            pong_timeout: cfg.pong_timeout,
            close_timeout: self.close_timeout,
            drain_timeout: cfg.shutdown_timeout,
            max_inflight: self.max_inflight,
        };
        let shared = Arc::new(Shared {
            hub,
            mode,
            settings,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            shutting_down: AtomicBool::new(false),
            gate,
        });
        let endpoint = WsEndpoint {
            shared,
            path: Arc::from(self.config.path.as_str()),
            tracker: TaskTracker::new(),
            pages: Arc::new(self.pages),
        };
        Ok(Server {
            endpoint,
            config: self.config,
            tls,
        })
    }
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
        self.hub().start_broker();
        // HTTP connections not (yet) upgraded: told to finish on shutdown.
        let http_stop = tokio_util::sync::CancellationToken::new();
        let http_tasks = TaskTracker::new();
        let mut http = http1::Builder::new();
        let limits = &self.config.limits;
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            .max_buf_size(limits.max_header_size.max(crate::limits::MIN_HEADER_SIZE))
            .keep_alive(true);
        let handshake_timeout = limits.handshake_timeout;
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
                    let permit = match &self.endpoint.shared.gate.pending {
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
                        let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
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
                    });
                }
            }
        }
        drop(listener);
        http_stop.cancel();
        http_tasks.close();
        self.shutdown(http_tasks).await;
        Ok(())
    }

    async fn shutdown(&self, http_tasks: TaskTracker) {
        let timeout = self.config.shutdown_timeout;
        tracing::info!(clients = self.hub().len(), "shutting down");
        self.endpoint
            .shared
            .shutting_down
            .store(true, Ordering::Release);
        self.hub().close_all(1001, "server shutting down");
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
