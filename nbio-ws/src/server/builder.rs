//! [`ServerBuilder`]: every setting of a server, in one place.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::Server;
use crate::auth::{AllowedOrigins, Authenticator, BearerToken};
use crate::config::Config;
use crate::history::{HistoryPolicy, HistoryStore};
use crate::http::gate::Gate;
use crate::http::WsEndpoint;
use crate::hub::{Client, Hub, HubLimits, SendBuffer};
use crate::limits::TrustedProxies;
use crate::metrics::Metrics;
use crate::router::{registered_methods, ErasedHandler, Handler, RequestLimits, Router, StateMap};
use crate::tls::TlsConfig;
use crate::ws::conn::{Hook, Mode, RawHandler, Settings, Shared};
use crate::ws::RawMessage;

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
    /// A method description (`ServerBuilder::method_doc`, feature
    /// `openrpc`) names a method that is not registered.
    #[error("a description is given for method {0:?}, which is not registered")]
    UnknownMethodDoc(String),
    /// A compression setting out of range (a level over 9, window bits
    /// outside 8–15).
    #[error("{0}")]
    Compression(String),
}

/// A setting given to the builder, applied over the base config.
type Override = Box<dyn Fn(&mut Config) + Send + Sync>;

/// Configures a [`Server`]. Start with [`Server::builder`].
///
/// ## How settings compose
///
/// Settings come from two sources that compose in a fixed way, whatever
/// the order of the calls: [`ServerBuilder::config`] gives the base (for
/// example [`Config::from_env`]); every other setter overrides its own
/// field on top of that base. So `.rate_limit(..).config(cfg)` and
/// `.config(cfg).rate_limit(..)` build the same server: `cfg` with that
/// rate limit. Calling `config` twice keeps the last base; calling a
/// setter twice keeps the last value.
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
    /// The base settings ([`ServerBuilder::config`]).
    base: Option<Config>,
    /// What the other setters set, applied over the base in order.
    overrides: Vec<Override>,
    methods: Vec<(String, ErasedHandler, String)>,
    use_registry: bool,
    state: StateMap,
    on_connect: Option<Hook>,
    on_disconnect: Option<Hook>,
    raw: Option<RawHandler>,
    close_timeout: Duration,
    pages: std::collections::HashMap<String, (&'static str, bytes::Bytes)>,
    broker: Option<Arc<dyn crate::broker::Broker>>,
    history_store: Option<Arc<dyn HistoryStore>>,
    /// A custom authenticator (see [`crate::auth`]).
    authenticator: Option<Arc<dyn Authenticator>>,
    /// A security setting given to the builder that does not parse.
    security_error: Option<String>,
    /// What the OpenRPC document says (see [`crate::openrpc`]).
    #[cfg(feature = "openrpc")]
    openrpc: crate::openrpc::Options,
}

impl ServerBuilder {
    pub(crate) fn new() -> Self {
        ServerBuilder {
            base: None,
            overrides: Vec::new(),
            methods: Vec::new(),
            use_registry: true,
            state: StateMap::default(),
            on_connect: None,
            on_disconnect: None,
            raw: None,
            close_timeout: Duration::from_secs(5),
            pages: std::collections::HashMap::new(),
            broker: None,
            history_store: None,
            authenticator: None,
            security_error: None,
            #[cfg(feature = "openrpc")]
            openrpc: crate::openrpc::Options::default(),
        }
    }

    /// The base settings (for example from [`Config::from_env`]). The
    /// other setters override their own fields on top of it, whether they
    /// are called before or after this (see [how settings compose](ServerBuilder#how-settings-compose)).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cfg = nbio_ws::Config::from_lookup(|k| (k == "WS_PORT").then(|| "9000".into()))?;
    /// let server = nbio_ws::Server::builder()
    ///     .rate_limit(5, Duration::from_secs(1), 5)
    ///     .config(cfg)
    ///     .build()?;
    /// assert_eq!(server.config().port, 9000);
    /// assert!(server.config().limits.rate_limit.enabled);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(mut self, config: Config) -> Self {
        self.base = Some(config);
        self
    }

    fn set(mut self, f: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        self.overrides.push(Box::new(f));
        self
    }

    /// The settings the server will be built with: the base, then every
    /// setter's override.
    pub fn effective_config(&self) -> Config {
        let mut cfg = self.base.clone().unwrap_or_default();
        for o in &self.overrides {
            o(&mut cfg);
        }
        cfg
    }

    /// The address to listen on (default `127.0.0.1:8080`; port 0 picks a
    /// free port).
    pub fn bind(self, addr: SocketAddr) -> Self {
        self.set(move |c| {
            c.host = addr.ip().to_string();
            c.port = addr.port();
        })
    }

    /// The path of the WebSocket endpoint (default `/ws`).
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.set(move |c| c.path = path.clone())
    }

    /// The largest message accepted, in bytes, after reassembly of
    /// fragments (default 1 MiB). Larger messages close the connection
    /// with 1009.
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.set(move |c| c.max_message_size = bytes)
    }

    /// The capacity of each client's outbound queue, in messages
    /// (`WS_SEND_BUFFER`, default 256). A client whose queue is full is
    /// closed with 1008 (slow consumer).
    pub fn send_buffer(self, messages: usize) -> Self {
        self.set(move |c| c.send_buffer = messages)
    }

    /// The capacity of each client's outbound queue, in bytes of payload
    /// (`WS_SEND_BUFFER_BYTES`, default
    /// [`Client::DEFAULT_SEND_BUFFER_BYTES`], 8 MiB). A message that would
    /// take the queue past it closes the client with 1008, as a full queue
    /// does; a message that finds the queue empty is accepted whatever its
    /// size. A broadcast counts its full size in every recipient's queue.
    ///
    /// ```
    /// let server = nbio_ws::Server::builder()
    ///     .send_buffer(64)
    ///     .send_buffer_bytes(1 << 20)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(server.config().send_buffer_bytes, 1 << 20);
    /// ```
    pub fn send_buffer_bytes(self, bytes: usize) -> Self {
        self.set(move |c| c.send_buffer_bytes = bytes)
    }

    /// How many rooms one client may be in at once
    /// (`WS_MAX_ROOMS_PER_CLIENT`, default 100). A join past it is refused
    /// with [`JoinError::TooManyRooms`](crate::JoinError::TooManyRooms),
    /// which a handler turns into the JSON-RPC error `-32020`; see
    /// [rooms and presence](crate#rooms-and-presence).
    pub fn max_rooms_per_client(self, rooms: usize) -> Self {
        self.set(move |c| c.max_rooms_per_client = rooms)
    }

    /// How often each client is pinged (default 10 s).
    pub fn ping_interval(self, every: Duration) -> Self {
        self.set(move |c| c.ping_interval = every)
    }

    /// How long a client may stay silent, not even answering pings, before
    /// it is closed with 1001 (default 60 s).
    pub fn pong_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.pong_timeout = timeout)
    }

    /// How long graceful shutdown waits for queued messages and
    /// connections (default 10 s).
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.shutdown_timeout = timeout)
    }

    /// How long the server waits for the peer's answer to its close frame
    /// (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How many requests of one connection may run at once, each element
    /// of a batch counting as one (`WS_MAX_CONCURRENT_REQUESTS`, default
    /// 64). At the limit the connection stops reading new messages until
    /// one finishes; pings, the pong timeout, its outbound queue, close
    /// and shutdown go on. The elements of a batch past the limit wait
    /// their turn.
    pub fn max_concurrent_requests(self, n: usize) -> Self {
        self.set(move |c| c.max_concurrent_requests = n)
    }

    /// Most requests in one batch (`WS_MAX_BATCH`, default 100). A larger
    /// batch is answered with one -32600 error, id `null`, message `batch
    /// too large: at most N requests`; none of it runs. The elements are
    /// counted as the array is scanned, so a huge batch costs no more than
    /// `n` elements.
    pub fn max_batch(self, n: usize) -> Self {
        self.set(move |c| c.max_batch = n)
    }

    /// Cancels a handler that runs longer than `timeout` and answers its
    /// request with -32008 "Request timed out", `data.timeout_ms`
    /// (`WS_REQUEST_TIMEOUT`; default none).
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.request_timeout = (!timeout.is_zero()).then_some(timeout))
    }

    /// Most bytes of results in the reply to one message, the elements of
    /// a batch together (`WS_MAX_RESPONSE_SIZE`, default 4 MiB). A result
    /// that does not fit is answered with -32603 "Response too large",
    /// `data.bytes` and `data.max_bytes`, instead.
    pub fn max_response_size(self, bytes: usize) -> Self {
        self.set(move |c| c.max_response_size = bytes)
    }

    /// Serves `/health` and `/metrics` on a listener of their own at
    /// `addr` (`WS_ADMIN_ADDR`), plain HTTP; the public port then answers
    /// 404 for both. Keep it on loopback or an internal network.
    pub fn admin_addr(self, addr: SocketAddr) -> Self {
        self.set(move |c| c.admin_addr = Some(addr))
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
    pub fn pubsub(self, pubsub: crate::broker::PubSubConfig) -> Self {
        self.set(move |c| c.pubsub = pubsub.clone())
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

    /// Keeps history for the rooms whose name matches `pattern` (`lobby`,
    /// `chat.*` for a prefix, `*` for all): the last `size` publications,
    /// each for `ttl`. Rules are tried in the order they were given, before
    /// the default of `WS_HISTORY_SIZE` / `WS_HISTORY_TTL`. See
    /// [`history`](crate::history).
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = nbio_ws::Server::builder()
    ///     .history("chat.*", 100, Duration::from_secs(600))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(server.config().history.policy("chat.lobby").size, 100);
    /// ```
    pub fn history(self, pattern: impl Into<String>, size: usize, ttl: Duration) -> Self {
        let rule = (pattern.into(), HistoryPolicy::new(size, ttl));
        self.set(move |c| c.history.rules.push(rule.clone()))
    }

    /// Most publications one recovery returns (`WS_HISTORY_MAX_RECOVER`,
    /// default 1000); a bigger gap is answered with `recovered: false`.
    pub fn history_max_recover(self, publications: usize) -> Self {
        self.set(move |c| c.history.max_recover = publications.max(1))
    }

    /// Keeps history in this store instead of the one the pub/sub
    /// adapter implies (memory without a broker, Redis with `redis`,
    /// JetStream with `nats`). Servers that share a
    /// [`MemoryHistory`](crate::history::MemoryHistory) in one process
    /// share their rooms' streams.
    pub fn history_store<S: HistoryStore>(mut self, store: S) -> Self {
        self.history_store = Some(Arc::new(store));
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

    /// Runs `hook` after each client connects (it is in the hub already),
    /// before any of its messages runs.
    ///
    /// While the hook runs, the connection goes on with everything else:
    /// what is sent to the client (by the hook, broadcasts, rooms) is
    /// written as it comes, so a hook that waits (for a database, say)
    /// does not make the client's queue overflow; pings and closes are
    /// handled; the client's messages are read and held back (as at the
    /// concurrency limit) and run once the hook has returned. If the
    /// connection ends meanwhile, the hook still runs to its end (sending
    /// fails with [`SendError::Closed`](crate::SendError::Closed)), and
    /// the disconnect hook runs after it.
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

    // --- authentication and origins (see `auth`)

    /// Authenticates every upgrade request with `authenticator` (replacing
    /// the built-in bearer token check of `WS_AUTH_ENABLED`). See
    /// [`auth`](crate::auth).
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Turns authentication on with these bearer tokens (`name:token` or
    /// a bare token), like `WS_AUTH_ENABLED=true` and `WS_BEARER_TOKENS`.
    pub fn bearer_tokens<'a>(self, tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let tokens = BearerToken::parse_list(tokens);
        self.set(move |c| {
            c.auth.enabled = true;
            c.auth.bearer_tokens = tokens.clone();
        })
    }

    /// The origins allowed to connect (`WS_ALLOWED_ORIGINS`), e.g.
    /// `["https://app.example.com"]`; `["*"]` allows all (the default).
    /// An origin that does not parse makes [`build`](crate::ServerBuilder::build) fail.
    pub fn allowed_origins<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = origins.into_iter().collect();
        match AllowedOrigins::parse(&list.join(",")) {
            Ok(o) => self.set(move |c| c.auth.allowed_origins = o.clone()),
            Err(bad) => {
                self.security_error = Some(format!("invalid allowed origin {bad:?}"));
                self
            }
        }
    }

    // --- abuse limits (see `limits`)

    /// Rate limits every connection to `rate` requests per `interval`,
    /// with bursts of `burst` (like `WS_RATE_LIMIT_ENABLED=true` and
    /// `WS_RATE_LIMIT_RATE`, `_INTERVAL`, `_BURST`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = nbio_ws::Server::builder()
    ///     .rate_limit(100, Duration::from_secs(60), 10)
    ///     .rate_limit_close_after(50)
    ///     .build();
    /// assert!(server.is_ok());
    /// ```
    pub fn rate_limit(self, rate: u32, interval: Duration, burst: u32) -> Self {
        self.set(move |c| {
            let r = &mut c.limits.rate_limit;
            r.enabled = true;
            r.rate = rate.max(1);
            r.interval = if interval.is_zero() {
                Duration::from_nanos(1)
            } else {
                interval
            };
            r.burst = burst.max(1);
        })
    }

    /// Closes a connection with 1008 after this many rate-limited requests
    /// in a row (`WS_RATE_LIMIT_CLOSE_AFTER`, default 50; 0 never closes).
    pub fn rate_limit_close_after(self, limited_in_a_row: u32) -> Self {
        self.set(move |c| c.limits.rate_limit.close_after = limited_in_a_row)
    }

    /// Most WebSocket connections at once (`WS_MAX_CONNECTIONS`; 0, the
    /// default, for no limit). Past it upgrades get HTTP 503.
    pub fn max_connections(self, n: usize) -> Self {
        self.set(move |c| c.limits.max_connections = n)
    }

    /// Most WebSocket connections from one client address
    /// (`WS_MAX_CONNECTIONS_PER_IP`; 0, the default, for no limit). Past
    /// it upgrades get HTTP 429.
    pub fn max_connections_per_ip(self, n: usize) -> Self {
        self.set(move |c| c.limits.max_connections_per_ip = n)
    }

    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed
    /// (`WS_TRUSTED_PROXIES`). An entry that does not parse makes
    /// [`build`](crate::ServerBuilder::build) fail.
    pub fn trusted_proxies<'a>(mut self, proxies: impl IntoIterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = proxies.into_iter().collect();
        match TrustedProxies::parse(&list.join(",")) {
            Ok(p) => self.set(move |c| c.limits.trusted_proxies = p.clone()),
            Err(bad) => {
                self.security_error = Some(format!("invalid trusted proxy {bad:?}"));
                self
            }
        }
    }

    /// How long a client may take to send its request headers (TLS
    /// handshake included), and an authenticator to decide
    /// (`WS_HANDSHAKE_TIMEOUT`, default 10 s).
    pub fn handshake_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.limits.handshake_timeout = timeout)
    }

    /// Largest request head, in bytes; at least 8192
    /// (`WS_MAX_HEADER_SIZE`, default 32 KiB). Larger heads get HTTP 431.
    pub fn max_header_size(self, bytes: usize) -> Self {
        self.set(move |c| c.limits.max_header_size = bytes)
    }

    /// Most TCP connections accepted and not yet upgraded
    /// (`WS_MAX_PENDING_HANDSHAKES`, default 1024; 0 for no limit). Past
    /// it new connections get HTTP 503 and are closed.
    pub fn max_pending_handshakes(self, n: usize) -> Self {
        self.set(move |c| c.limits.max_pending_handshakes = n)
    }

    // --- TLS

    /// Serves TLS with the certificate chain and private key in these PEM
    /// files (like `WS_TLS_ENABLED`, `WS_TLS_CERT`, `WS_TLS_KEY`). Needs the
    /// `tls` cargo feature; [`build`](crate::ServerBuilder::build) reads
    /// and checks the files.
    pub fn tls_pem_files(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let tls = TlsConfig {
            enabled: true,
            cert: Some(cert.into()),
            key: Some(key.into()),
        };
        self.set(move |c| c.tls = tls.clone())
    }

    /// Accepts clients' `permessage-deflate` offers (RFC 7692), or not
    /// (default: off, `WS_COMPRESSION`). A broadcast or room message is
    /// then compressed once and the compressed bytes are shared by every
    /// recipient that negotiated compression; see
    /// [`CompressionConfig`](crate::CompressionConfig).
    pub fn compression(self, enabled: bool) -> Self {
        self.set(move |c| c.compression.enabled = enabled)
    }

    /// The deflate level of what the server sends, 0 (store) to 9
    /// (smallest); default 6. Does not by itself turn compression on.
    pub fn compression_level(self, level: u32) -> Self {
        self.set(move |c| c.compression.level = level)
    }

    /// Messages shorter than this many bytes are sent uncompressed
    /// (default 256). Does not by itself turn compression on.
    pub fn compression_threshold(self, bytes: usize) -> Self {
        self.set(move |c| c.compression.threshold = bytes)
    }

    /// The largest LZ77 windows, as bits (8–15): the server's own (default
    /// 15; it costs no memory per connection, deflaters are per thread)
    /// and the one asked of clients that keep their context between
    /// messages (default 12, a 4 KiB window: the inflate state such a
    /// connection holds). Does not by itself turn compression on.
    pub fn compression_window_bits(self, server: u8, client: u8) -> Self {
        self.set(move |c| {
            c.compression.server_max_window_bits = server;
            c.compression.client_max_window_bits = client;
        })
    }

    /// Checks the configuration and builds the server. Fails on a method
    /// name registered twice, a path without a leading `/`, a zero
    /// limit, or pub/sub settings that cannot work (an adapter that is not
    /// compiled in, an invalid URL). A broker that is merely unreachable
    /// does not fail the build: it is retried in the background.
    pub fn build(self) -> Result<Server, BuildError> {
        let config = self.effective_config();
        let cfg = &config;
        if !cfg.path.starts_with('/') {
            return Err(BuildError::InvalidPath(cfg.path.clone()));
        }
        for (name, v) in [
            ("max_message_size", cfg.max_message_size),
            ("send_buffer", cfg.send_buffer),
            ("send_buffer_bytes", cfg.send_buffer_bytes),
            ("max_concurrent_requests", cfg.max_concurrent_requests),
            ("max_batch", cfg.max_batch),
            ("max_response_size", cfg.max_response_size),
            ("max_rooms_per_client", cfg.max_rooms_per_client),
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
        let check_duplicates = |all: &[(String, ErasedHandler, String)]| {
            let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
            for (name, _, origin) in all {
                if let Some(first) = seen.insert(name, origin) {
                    return Err(BuildError::DuplicateMethod {
                        name: name.clone(),
                        first: first.to_owned(),
                        second: origin.clone(),
                    });
                }
            }
            Ok(())
        };
        check_duplicates(&all)?;

        #[allow(unused_mut)]
        let mut pages = self.pages;
        #[cfg(feature = "openrpc")]
        let openrpc = if self.raw.is_some() {
            None
        } else {
            let doc = self
                .openrpc
                .document(
                    all.iter().map(|(n, _, o)| (n.as_str(), o.as_str())),
                    crate::openrpc::default_server(cfg.tls.enabled, &cfg.host, cfg.port, &cfg.path),
                )
                .map_err(BuildError::UnknownMethodDoc)?;
            let doc: Arc<str> = Arc::from(doc);
            if self.openrpc.discover {
                all.push(crate::openrpc::discover_method(Arc::clone(&doc)));
                check_duplicates(&all)?;
            }
            if self.openrpc.http {
                pages
                    .entry("/openrpc.json".to_owned())
                    .or_insert(("application/json", bytes::Bytes::from(doc.to_string())));
            }
            Some(doc)
        };

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
        let hub = Hub::with_limits(
            Arc::clone(&metrics),
            HubLimits {
                max_rooms_per_client: cfg.max_rooms_per_client,
            },
        );
        if let Some(b) = broker {
            hub.attach_broker(
                b,
                &cfg.pubsub.channel,
                cfg.pubsub.presence_ttl,
                cfg.pubsub.queue_bytes,
            );
        }
        if cfg.history.any() || self.history_store.is_some() {
            let store = match self.history_store {
                Some(s) => s,
                None => crate::history::for_pubsub(&cfg.pubsub)?,
            };
            hub.attach_history(store, cfg.history.clone());
        }
        let mode = match self.raw {
            Some(raw) => Mode::Raw(raw),
            None => Mode::Rpc(Router::new(
                all.into_iter().map(|(n, h, _)| (n, h)).collect(),
                self.state,
                metrics,
                RequestLimits {
                    max_batch: cfg.max_batch,
                    max_response_size: cfg.max_response_size,
                    request_timeout: cfg.request_timeout,
                },
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
        cfg.compression
            .validate()
            .map_err(BuildError::Compression)?;
        let tls = crate::tls::Tls::new(&cfg.tls).map_err(BuildError::Security)?;
        let gate = Gate::new(cfg, self.authenticator, Arc::clone(hub.metrics()))
            .map_err(BuildError::Security)?;
        let settings = Settings {
            max_message_size: cfg.max_message_size,
            send_buffer: SendBuffer {
                messages: cfg.send_buffer,
                bytes: cfg.send_buffer_bytes,
            },
            ping_interval: cfg.ping_interval,
            pong_timeout: cfg.pong_timeout,
            close_timeout: self.close_timeout,
            drain_timeout: cfg.shutdown_timeout,
            max_inflight: cfg.max_concurrent_requests,
            compression: cfg.compression.clone(),
        };
        let shared = Arc::new(Shared {
            hub,
            mode,
            settings,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            shutting_down: AtomicBool::new(false),
        });
        let endpoint = WsEndpoint {
            shared,
            gate: Arc::new(gate),
            path: Arc::from(cfg.path.as_str()),
            tracker: TaskTracker::new(),
            pages: Arc::new(pages),
            admin_elsewhere: cfg.admin_addr.is_some(),
        };
        Ok(Server {
            endpoint,
            config,
            tls,
            #[cfg(feature = "openrpc")]
            openrpc,
        })
    }
}

/// The OpenRPC document (feature `openrpc`; see [`crate::openrpc`]).
#[cfg(feature = "openrpc")]
impl ServerBuilder {
    /// The `info` of the document: the API's title and version (default
    /// `"nbio-ws server"`, `"0.0.0"`).
    pub fn openrpc_info(mut self, title: impl Into<String>, version: impl Into<String>) -> Self {
        self.openrpc.info.title = title.into();
        self.openrpc.info.version = version.into();
        self
    }

    /// The `info.description` of the document (Markdown).
    pub fn openrpc_description(mut self, description: impl Into<String>) -> Self {
        self.openrpc.info.description = Some(description.into());
        self
    }

    /// The WebSocket URL the document gives clients in `servers`, such as
    /// `wss://chat.example.com/ws` behind a proxy. By default it is the
    /// address the server is configured to listen on (`localhost` for a
    /// wildcard address); with port 0 and no URL given, `servers` is left
    /// out.
    pub fn openrpc_server_url(mut self, url: impl Into<String>) -> Self {
        self.openrpc.server_url = Some(url.into());
        self
    }

    /// Describes the method `name` (one registered with
    /// [`method`](ServerBuilder::method), or an `#[rpc_method]` whose
    /// description this replaces). [`build`](ServerBuilder::build) fails
    /// if no method has that name.
    pub fn method_doc(mut self, name: impl Into<String>, doc: crate::openrpc::MethodDoc) -> Self {
        self.openrpc.docs.push((name.into(), doc));
        self
    }

    /// Describes a notification the server sends to clients (with
    /// [`Hub::broadcast`](crate::Hub::broadcast), a room, or a client):
    /// its method name, its params (what `T` serializes to) and a doc text
    /// (first paragraph: summary; the rest: description). They are listed
    /// in the document's `x-notifications`.
    ///
    /// ```
    /// use schemars::JsonSchema;
    ///
    /// #[derive(serde::Serialize, JsonSchema)]
    /// struct Said { from: String, text: String }
    ///
    /// let server = nbio_ws::Server::builder()
    ///     .notification::<Said>("chat.message", "A message said in a room you are in.")
    ///     .build()?;
    /// let doc: serde_json::Value = serde_json::from_str(server.openrpc_document().unwrap())?;
    /// assert_eq!(doc["x-notifications"][0]["name"], "chat.message");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notification<T: schemars::JsonSchema>(
        mut self,
        name: impl Into<String>,
        doc: &str,
    ) -> Self {
        self.openrpc
            .notifications
            .push(crate::openrpc::NotificationDoc::new::<T>(name.into(), doc));
        self
    }

    /// Whether the `rpc.discover` method answers the document (default
    /// `true`).
    pub fn rpc_discover(mut self, enabled: bool) -> Self {
        self.openrpc.discover = enabled;
        self
    }

    /// Whether `GET /openrpc.json` answers the document (default `true`;
    /// a [`page`](ServerBuilder::page) at that path wins).
    pub fn openrpc_http(mut self, enabled: bool) -> Self {
        self.openrpc.http = enabled;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env() -> Config {
        Config::from_lookup(|k| match k {
            "WS_PORT" => Some("9001".into()),
            "WS_SEND_BUFFER" => Some("32".into()),
            "WS_ALLOWED_ORIGINS" => Some("https://a.example".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn setters_and_config_compose_in_any_order() {
        let before = Server::builder()
            .rate_limit(7, Duration::from_secs(1), 3)
            .path("/socket")
            .config(from_env())
            .effective_config();
        let after = Server::builder()
            .config(from_env())
            .rate_limit(7, Duration::from_secs(1), 3)
            .path("/socket")
            .effective_config();
        assert_eq!(before, after);
        // The setters win over the base...
        assert!(before.limits.rate_limit.enabled);
        assert_eq!(before.limits.rate_limit.rate, 7);
        assert_eq!(before.path, "/socket");
        // ...and the base keeps everything the setters did not touch.
        assert_eq!(before.port, 9001);
        assert_eq!(before.send_buffer, 32);
        assert!(!before.auth.allowed_origins.is_any());
        // A later base replaces an earlier one; a later setter value wins.
        let cfg = Server::builder()
            .config(Config::default())
            .send_buffer(5)
            .config(from_env())
            .send_buffer(6)
            .effective_config();
        assert_eq!((cfg.port, cfg.send_buffer), (9001, 6));
        // What `build` uses is the same.
        let server = Server::builder()
            .max_connections(3)
            .config(from_env())
            .build()
            .unwrap();
        assert_eq!(server.config().limits.max_connections, 3);
        assert_eq!(server.config().port, 9001);
    }
}
